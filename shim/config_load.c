/*
 * config_load: a conf.d/ directory read in byte order of its *.conf
 * names, each file parsed, the whole finished (config_load()).
 */
#include "config_int.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int conf_name(const struct dirent *d)
{
	size_t n = strlen(d->d_name);

	return d->d_name[0] != '.' && n > 5 &&
	    strcmp(d->d_name + n - 5, ".conf") == 0;
}

/* Byte order, whatever the locale: file order must not depend on LANG. */
static int name_order(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

/* The whole file, or NULL with errno set. */
static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL, *nb;
	size_t cap = 0;
	int e = 0;

	*len = 0;
	if (!f)
		return NULL;
	while (!e && !feof(f)) {
		if (*len == cap) {
			if (!(nb = realloc(buf, cap * 2 + 4096))) {
				e = ENOMEM;
				break;
			}
			buf = nb;
			cap = cap * 2 + 4096;
		}
		*len += fread(buf + *len, 1, cap - *len, f);
		if (ferror(f))
			e = errno ? errno : EIO;
	}
	fclose(f);
	if (e) {
		free(buf);
		buf = NULL;
		errno = e;
	}
	return buf;
}

static int load_file(struct config *cfg, const char *dir, const char *name,
    FILE *err)
{
	struct ctx c = { err, NULL, 0, 0 };
	struct stat st;
	size_t len;
	char *path, *text = NULL;
	int n = 0;

	if (asprintf(&path, "%s/%s", dir, name) < 0) {
		c.file = dir;
		cf_report(&c, 0, "out of memory");
		return 1;
	}
	c.file = path;
	/* stat first: opening a FIFO named x.conf would block. A directory
	 * is passed over; a FIFO or a device is refused, not ignored. */
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		n = 0;
	else if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
		cf_report(&c, 0, "not a regular file");
	else if ((text = slurp(path, &len)))
		n = config_parse(cfg, path, text, len, err);
	else
		cf_report(&c, 0, "cannot read: %s", strerror(errno));
	free(text);
	free(path);
	return n + c.nerr;
}

struct config *config_load(const char *dir, FILE *err)
{
	struct ctx c = { err, dir, 0, 0 };
	struct dirent **list;
	struct config *cfg;
	int n, nerr = 0;

	if ((n = scandir(dir, &list, conf_name, name_order)) < 0) {
		cf_report(&c, 0, "cannot read: %s", strerror(errno));
		return NULL;
	}
	if (!(cfg = config_new()))
		cf_report(&c, 0, "out of memory");
	for (int i = 0; i < n; i++) {
		if (cfg)
			nerr += load_file(cfg, dir, list[i]->d_name, err);
		free(list[i]);
	}
	free(list);
	if (cfg && n == 0)
		cf_report(&c, 0, "no .conf file");
	else if (cfg)
		nerr += config_finish(cfg, dir, err);
	if (cfg && nerr + c.nerr == 0)
		return cfg;
	config_free(cfg);
	return NULL;
}
