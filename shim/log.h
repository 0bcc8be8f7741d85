/*
 * log: one line per event, key=value, to stderr or syslog. The destination
 * and level are the process's own settings (set once at start and reload).
 *
 * Logging never blocks the event loop: a line the sink cannot take at once
 * (a pipe nobody reads, a slow syslog daemon) waits in a bounded queue
 * that a write watcher flushes; when the queue is full, lines are dropped
 * and counted, and the count is logged once the sink takes lines again.
 */
#ifndef MAILSHIM_LOG_H
#define MAILSHIM_LOG_H

#include <stddef.h>

#include <ev.h>

#include "config.h"

void log_setup(enum log_dest dest, enum log_level level);
int log_enabled(enum log_level level);

/* From now on, this process's lines go through the queue, flushed on
 * loop. Before (or without) it, a line the sink cannot take waits. */
void log_attach(struct ev_loop *loop);

/* "level=LEVEL msg=\"...\"" for diagnostics; printf-style message. */
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Makes s safe inside a quoted log value, in place: a double quote or
 * backslash becomes a single quote, any byte but printable ASCII a '?'. */
void log_unquote(char *s);

/* A raw, already formatted line (the per-connection line). */
void log_line(enum log_level level, const char *line, size_t len);

/* Lines dropped so far because the sink was too slow. */
unsigned long log_dropped(void);

#endif
