/*
 * main: the command line, the file descriptor limit and the entry: the
 * first load, the listeners, then the supervisor. generation.c builds a
 * load and its listeners, worker.c runs a worker, super.c is the
 * supervisor. main() and spawn() (super.c) are the only places that exit.
 *
 * One supervisor, whatever the number of workers. It keeps the privileges
 * it started with (root can read root-only keys), binds a copy of every
 * listener per worker slot (SO_REUSEPORT), and loads and builds each
 * configuration generation itself: parsed files, resolved upstreams, TLS
 * contexts. Workers are forked from it with one generation and never load
 * anything; they drop to `user` and serve.
 *
 * SIGHUP: the supervisor loads a new generation. If, and only if, all of
 * it is good, it forks a fresh worker per slot on it (they inherit the
 * same listening sockets, so no client is turned away meanwhile) and tells
 * the old workers to stop accepting and finish their sessions, for at most
 * their shutdown_grace. Every worker serves the same generation, or the
 * reload changes nothing and says why in the log. Workers ignore SIGHUP
 * from before they are forked. The listening sockets stay, so a change of
 * listen addresses (or of workers) needs a restart.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "config.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "runtime.h"
#include "tls.h"

#define DEFAULT_DIR "/etc/mailshim/conf.d"
#define FD_MARGIN 32                  /* stdio, listeners, event loop, syslog */

static void usage(FILE *f)
{
	fprintf(f, "usage: mailshim [-c DIR] [-t] [-V]\n"
	    "  -c DIR  configuration directory (default " DEFAULT_DIR ")\n"
	    "  -t      check the configuration and exit (0: clean, 1: errors)\n"
	    "  -V      print the version and the TLS library\n");
}

/*
 * Descriptors: a session holds two (client and upstream). A soft limit of
 * 1024 (systemd's default) would stop a worker at about 500 sessions, so
 * the soft limit goes up to the hard one, and the sessions it allows per
 * worker are logged (or, for -t, compared with max_connections).
 */
static unsigned long long sessions_for(rlim_t fds)
{
	return fds > FD_MARGIN ? (unsigned long long)(fds - FD_MARGIN) / 2 : 0;
}

static void raise_nofile(const struct config *cfg)
{
	struct rlimit rl;
	rlim_t want;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	want = rl.rlim_max;
	if (want == RLIM_INFINITY) {
		/* The kernel's own ceiling for a process (fs.nr_open). */
		FILE *f = fopen("/proc/sys/fs/nr_open", "re");
		unsigned long long n = 0;
		if (f != NULL && fscanf(f, "%llu", &n) == 1 && n > 0)
			want = (rlim_t)n;
		else
			want = 1048576;
		if (f != NULL)
			fclose(f);
	}
	if (rl.rlim_cur < want) {
		struct rlimit nl = { want, rl.rlim_max };
		if (setrlimit(RLIMIT_NOFILE, &nl) == 0)
			rl.rlim_cur = want;
		else
			log_msg(LEVEL_WARN, "cannot raise the file descriptor limit from %llu to %llu: %s",
			    (unsigned long long)rl.rlim_cur, (unsigned long long)want, strerror(errno));
	}
	log_msg(LEVEL_INFO, "file descriptor limit %llu: up to %llu sessions per worker "
	    "(max_connections %u)", (unsigned long long)rl.rlim_cur,
	    sessions_for(rl.rlim_cur), cfg->max_connections);
	if (sessions_for(rl.rlim_cur) < cfg->max_connections)
		log_msg(LEVEL_WARN, "max_connections = %u cannot be met: %llu file descriptors "
		    "allow %llu sessions per worker", cfg->max_connections,
		    (unsigned long long)rl.rlim_cur, sessions_for(rl.rlim_cur));
}

/* -t: a warning, not an error (the limit at run time may differ). */
static void check_nofile(const struct config *cfg, const char *dir)
{
	struct rlimit rl;
	const char *file;
	char where[1100];
	int line;
	bool set;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_max == RLIM_INFINITY ||
	    sessions_for(rl.rlim_max) >= cfg->max_connections)
		return;
	/* A default stands on no line: the message names the directory. */
	set = config_key_where(cfg, NULL, "max_connections", 0, &file, &line);
	if (set)
		snprintf(where, sizeof(where), "%s:%d", file, line);
	else
		snprintf(where, sizeof(where), "%s", dir);
	fprintf(stderr, "%s: warning: max_connections = %u%s cannot be met: the hard "
	    "limit of %llu file descriptors allows %llu sessions per worker\n", where,
	    cfg->max_connections, set ? "" : " (the default)",
	    (unsigned long long)rl.rlim_max, sessions_for(rl.rlim_max));
}

int main(int argc, char **argv)
{
	struct runtime rt;
	bool check = false;
	int opt, rc;

	memset(&rt, 0, sizeof(rt));
	rt.dir = DEFAULT_DIR;
	while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
		switch (opt) {
		case 'c':
			rt.dir = optarg;
			break;
		case 't':
			check = true;
			break;
		case 'V':
			printf("mailshim %s\nTLS library: %s\n", MAILSHIM_VERSION, tls_library());
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	serving = !check;
	/* Before the first context, so every context of every load uses them. */
	if (!check && tls_tickets_init() < 0) {
		fprintf(stderr, "cannot make the session ticket keys: %s\n", strerror(errno));
		return 1;
	}
	if (!check) {
		shm = mmap(NULL, sizeof(*shm), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (shm == MAP_FAILED) {
			fprintf(stderr, "cannot map the metrics counters: %s\n", strerror(errno));
			return 1;
		}
		shm->generation = 1;
	}
	rt.gen = generation_load(rt.dir, stderr);
	if (rt.gen == NULL) {
		fprintf(stderr, "%s: configuration has errors\n", rt.dir);
		return 1;
	}
	if (check) {
		check_nofile(rt.gen->cfg, rt.dir);
		printf("%s: configuration OK (%zu services)\n", rt.dir, rt.gen->nsvcs);
		runtime_free(&rt);
		return 0;
	}
	log_setup(rt.gen->cfg->log, rt.gen->cfg->log_level);
	raise_nofile(rt.gen->cfg);
	rt.nworkers = worker_count(rt.gen->cfg);
	if (bind_all(&rt) < 0) {
		runtime_free(&rt);
		return 1;
	}
	log_msg(LEVEL_INFO, "mailshim %s started: %zu services, %u workers, %s",
	    MAILSHIM_VERSION, rt.gen->nsvcs, rt.nworkers, tls_library());
	rc = supervise(&rt, rt.gen->cfg);
	runtime_free(&rt);
	return rc;
}
