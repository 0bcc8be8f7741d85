#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Lines waiting for a slow sink: bounded, so memory never grows with it. */
#define QUEUE_CAP (256 * 1024)
#define LINE_MAX_LEN 4096

static enum log_dest log_to = LOG_STDERR;
static enum log_level log_max = LEVEL_INFO;

static const char *const level_names[] = { "error", "warn", "info", "debug" };
/*
 * Syslog priorities (RFC 5424: facility mail = 2, severities 3, 4, 6, 7).
 * <syslog.h> is not included: its LOG_SYSLOG macro (a facility) would
 * shadow config.h's enum value of the same name.
 */
#define FACILITY_MAIL (2 << 3)
static const int level_prio[] = { 3, 4, 6, 7 };

/* The sink: stderr (reopened non-blocking where it can block) or a
 * datagram socket to the syslog daemon. */
static int sink_fd = -1;
static bool sink_sock;

/* Queued lines, each stored as a 2-byte length and its bytes. */
static struct {
	char *data;
	size_t head, len;
	unsigned long dropped, reported;
	struct ev_loop *loop;
	ev_io w;
} q;

/* The watcher must never outlive the descriptor it watches. */
static void sink_close(void)
{
	if (q.loop != NULL && ev_is_active(&q.w))
		ev_io_stop(q.loop, &q.w);
	if (sink_fd > STDERR_FILENO)
		close(sink_fd);
	sink_fd = -1;
}

static void open_stderr(void)
{
	struct stat st;
	char path[64];
	int fd;

	sink_sock = false;
	sink_fd = STDERR_FILENO;
	if (fstat(STDERR_FILENO, &st) < 0)
		return;
	if (S_ISSOCK(st.st_mode)) {
		sink_sock = true;
		return;
	}
	if (!S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode))
		return;     /* a file never blocks for long */
	/* A descriptor of its own, so O_NONBLOCK does not reach the shared
	 * one (a terminal, the parent's pipe). */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", STDERR_FILENO);
	fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_APPEND);
	if (fd >= 0)
		sink_fd = fd;
}

static void open_syslog(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", "/dev/log");
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		close(fd);
		fd = -1;
	}
	sink_fd = fd;
	sink_sock = true;
}

void log_setup(enum log_dest dest, enum log_level level)
{
	if (sink_fd < 0 || dest != log_to) {
		sink_close();
		if (dest == LOG_SYSLOG)
			open_syslog();
		else
			open_stderr();
	}
	log_to = dest;
	log_max = level;
}

int log_enabled(enum log_level level)
{
	return level <= log_max;
}

unsigned long log_dropped(void)
{
	return q.dropped;
}

/* One line out, whole or not at all: 1 sent, 0 would block, -1 lost. */
static int emit(const char *p, size_t n)
{
	ssize_t r;

	/* The syslog daemon may start (or restart) after us. */
	if (sink_fd < 0 && log_to == LOG_SYSLOG)
		open_syslog();
	if (sink_fd < 0)
		return -1;
	if (sink_sock)
		r = send(sink_fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
	else
		r = write(sink_fd, p, n);
	if (r == (ssize_t)n)
		return 1;
	if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
	    errno == ENOBUFS))
		return 0;
	/* A short write to a pipe cannot happen for lines of at most
	 * PIPE_BUF bytes; anything else is a sink that is gone. */
	if (log_to == LOG_SYSLOG)
		sink_close();
	return -1;
}

/* Without a loop to flush the queue, wait for the sink (start-up, the
 * supervisor): those are a handful of lines. */
static void emit_blocking(const char *p, size_t n)
{
	struct pollfd pfd = { sink_fd, POLLOUT, 0 };
	int i;

	for (i = 0; i < 50 && emit(p, n) == 0; i++)
		poll(&pfd, 1, 100);
}

static void queue_watch(void)
{
	if (q.loop == NULL || sink_fd < 0)
		return;
	if (q.len > 0 && !ev_is_active(&q.w)) {
		ev_io_set(&q.w, sink_fd, EV_WRITE);
		ev_io_start(q.loop, &q.w);
	} else if (q.len == 0 && ev_is_active(&q.w)) {
		ev_io_stop(q.loop, &q.w);
	}
}

static void enqueue(const char *p, size_t n)
{
	size_t tail;
	uint8_t hdr[2] = { (uint8_t)(n >> 8), (uint8_t)n };

	if (q.data == NULL && (q.data = malloc(QUEUE_CAP)) == NULL) {
		q.dropped++;
		return;
	}
	if (q.len + 2 + n > QUEUE_CAP) {
		q.dropped++;
		return;
	}
	if (q.head + q.len + 2 + n > QUEUE_CAP) {
		memmove(q.data, q.data + q.head, q.len);
		q.head = 0;
	}
	tail = q.head + q.len;
	memcpy(q.data + tail, hdr, 2);
	memcpy(q.data + tail + 2, p, n);
	q.len += 2 + n;
}

static void report_drops(void);

/* Send queued lines in order until the sink pushes back. */
static void flush(void)
{
	while (q.len > 0) {
		const uint8_t *h = (const uint8_t *)q.data + q.head;
		size_t n = (size_t)h[0] << 8 | h[1];
		int r = emit((const char *)h + 2, n);
		if (r == 0)
			break;
		q.head += 2 + n;
		q.len -= 2 + n;
		if (r < 0)
			q.dropped++;
	}
	if (q.len == 0) {
		q.head = 0;
		report_drops();
	}
	queue_watch();
}

static void flush_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	flush();
}

void log_attach(struct ev_loop *loop)
{
	if (q.loop != NULL && ev_is_active(&q.w))
		ev_io_stop(q.loop, &q.w);
	q.loop = loop;
	ev_init(&q.w, flush_cb);
	queue_watch();
}

/* Add the syslog header: "<PRI>Mmm dd hh:mm:ss mailshim[PID]: ". */
static size_t syslog_frame(int prio, char *out, size_t cap)
{
	char stamp[32] = "";
	time_t now = time(NULL);
	struct tm tm;
	int n;

	if (localtime_r(&now, &tm) != NULL)
		strftime(stamp, sizeof(stamp), "%b %e %H:%M:%S", &tm);
	n = snprintf(out, cap, "<%d>%s mailshim[%d]: ", FACILITY_MAIL | prio, stamp, (int)getpid());
	return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static void put(enum log_level level, const char *line, size_t len)
{
	char out[LINE_MAX_LEN];
	size_t pre = 0, n;

	if (log_to == LOG_SYSLOG)
		pre = syslog_frame(level_prio[level], out, sizeof(out));
	/* One write per line, so lines of several workers never interleave
	 * (a pipe keeps writes of up to PIPE_BUF bytes whole). */
	if (len > sizeof(out) - 1 - pre)
		len = sizeof(out) - 1 - pre;
	memcpy(out + pre, line, len);
	n = pre + len;
	if (log_to != LOG_SYSLOG)
		out[n++] = '\n';
	if (q.len > 0) {
		enqueue(out, n);
		flush();
		return;
	}
	if (emit(out, n) != 0)
		return;
	if (q.loop == NULL) {
		emit_blocking(out, n);
		return;
	}
	enqueue(out, n);
	queue_watch();
}

void log_line(enum log_level level, const char *line, size_t len)
{
	if (!log_enabled(level))
		return;
	if (sink_fd < 0 && log_to == LOG_STDERR)
		open_stderr();
	put(level, line, len);
}

static void report_drops(void)
{
	char line[128];
	int n;

	if (q.dropped == q.reported)
		return;
	n = snprintf(line, sizeof(line),
	    "level=warn msg=\"log sink too slow: %lu lines dropped\"", q.dropped - q.reported);
	q.reported = q.dropped;
	if (n > 0)
		put(LEVEL_WARN, line, (size_t)n);
}

/* Peers' words (an MX's reply, a certificate's subject) go into quoted
 * values as printable ASCII only: no quote or backslash to end the value,
 * no control byte to start a line for a parser or a terminal, no byte
 * that is not UTF-8 (journald would keep the line as a blob) or that is
 * a line break to some (U+0085, U+2028), and a value cut anywhere stays
 * whole characters. Lossy, in place. */
void log_unquote(char *s)
{
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			*s = '\'';
		else if (c < 0x20 || c > 0x7e)
			*s = '?';
	}
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	char line[2048], msg[1600];
	va_list ap;
	int n;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* Quote the message so a log parser can split key=value safely. */
	log_unquote(msg);
	n = snprintf(line, sizeof(line), "level=%s msg=\"%s\"", level_names[level], msg);
	if (n > 0)
		log_line(level, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}
