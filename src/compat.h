/*-------------------------------------------------------------------------
 *
 * compat.h
 *		The one place where bunnydb deals with differences between
 *		PostgreSQL major versions.  Target: PostgreSQL 15.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BUNNYDB_COMPAT_H
#define BUNNYDB_COMPAT_H

#include "commands/copyfrom_internal.h"
#include "replication/origin.h"

#if PG_VERSION_NUM < 150000
#error "bunnydb requires PostgreSQL 15 or later"
#endif

/* PostgreSQL 16 added the "acquired_by" argument */
#if PG_VERSION_NUM >= 160000
#define bunny_replorigin_session_setup(id) replorigin_session_setup((id), 0)
#else
#define bunny_replorigin_session_setup(id) replorigin_session_setup(id)
#endif

/*
 * The receive/input functions BeginCopyFrom set up, one per attribute of the
 * table (dropped ones left uninitialised).  CopyFromStateData is internal to
 * COPY: its layout may change between major versions.
 */
#define bunny_copy_in_functions(cstate) ((cstate)->in_functions)

/*
 * Make CopyFrom count every row of a binary COPY as row_bytes towards the
 * size at which it writes out its buffered rows (MAX_BUFFERED_BYTES, 64 kB
 * in PostgreSQL 15).  CopyFrom counts the length of line_buf, which
 * only text and CSV input fill; for binary input it stays 0, and the
 * buffer is written only every MAX_BUFFERED_TUPLES (1000) rows.  In binary
 * mode nothing else reads line_buf (not even the error context callback),
 * and nothing resets it.
 */
#define bunny_copy_set_binary_row_bytes(cstate, row_bytes) \
	((cstate)->line_buf.len = (row_bytes))

#endif							/* BUNNYDB_COMPAT_H */
