/*
 * log: one line per event, key=value, to stderr or syslog. The destination
 * and level are the process's own settings (set once at start and reload).
 */
#ifndef MAILSHIM_LOG_H
#define MAILSHIM_LOG_H

#include "config.h"

void log_setup(enum log_dest dest, enum log_level level);
int log_enabled(enum log_level level);

/* "level=LEVEL msg=\"...\"" for diagnostics; printf-style message. */
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A raw, already formatted line (the per-connection line). */
void log_line(enum log_level level, const char *line, size_t len);

#endif
