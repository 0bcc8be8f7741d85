#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

static enum log_dest log_to = LOG_STDERR;
static enum log_level log_max = LEVEL_INFO;

static const char *const level_names[] = { "error", "warn", "info", "debug" };
static const int level_prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

void log_setup(enum log_dest dest, enum log_level level)
{
	if (dest == LOG_SYSLOG && log_to != LOG_SYSLOG)
		openlog("mailshim", LOG_PID | LOG_NDELAY, LOG_MAIL);
	log_to = dest;
	log_max = level;
}

int log_enabled(enum log_level level)
{
	return level <= log_max;
}

void log_line(enum log_level level, const char *line, size_t len)
{
	char out[4096];

	if (!log_enabled(level))
		return;
	if (log_to == LOG_SYSLOG) {
		syslog(level_prio[level], "%.*s", (int)len, line);
		return;
	}
	/* One write per line, so lines of several workers never interleave. */
	if (len > sizeof(out) - 1)
		len = sizeof(out) - 1;
	memcpy(out, line, len);
	out[len] = '\n';
	if (write(STDERR_FILENO, out, len + 1) < 0)
		return;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	char line[2048], msg[1600];
	va_list ap;
	size_t i, j = 0;
	int n;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* Quote the message so a log parser can split key=value safely. */
	for (i = 0; msg[i] != '\0' && j < sizeof(msg) - 2; i++) {
		char ch = msg[i];
		if (ch == '"' || ch == '\\' || ch == '\n' || ch == '\r')
			ch = '\'';
		msg[j++] = ch;
	}
	msg[j] = '\0';
	n = snprintf(line, sizeof(line), "level=%s msg=\"%s\"", level_names[level], msg);
	if (n > 0)
		log_line(level, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}
