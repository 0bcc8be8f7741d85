/*
 * sockbio: the BIO a TLS endpoint reads and writes its socket through,
 * one readv() per flight instead of two reads per record (sockbio.c).
 */
#ifndef MAILSHIM_SOCKBIO_H
#define MAILSHIM_SOCKBIO_H

#include <stdbool.h>

#include "buf.h"
#include "endpoint.h"

typedef struct bio_st BIO;

/* Bytes a read may take beyond what the TLS library asked for: as much
 * as a relay buffer holds, so one read fills one write. */
#define SOCKBIO_AHEAD BUF_CAP

/* A BIO on e's socket, keeping its state in e; NULL on failure. */
BIO *sockbio_new(struct endpoint *e);
/* A read event came: the socket may have bytes again. */
void sockbio_readable(struct endpoint *e);
/* Give back what e holds (the endpoint closes or leaves TLS). */
void sockbio_release(struct endpoint *e);
/* Bytes read from the socket that the TLS library has not taken yet. */
bool sockbio_buffered(const struct endpoint *e);

#endif
