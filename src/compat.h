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
 * Make a binary COPY write out its buffered rows every flush_rows rows
 * (1 to 1000).  CopyFrom writes them at MAX_BUFFERED_TUPLES (1000) rows or
 * MAX_BUFFERED_BYTES (65535 in PostgreSQL 15, private to copyfrom.c) of
 * input, and counts the length of line_buf as each row's size.  Only text
 * and CSV input fill line_buf; for binary input it stays 0, so only the
 * 1000 rows count.  Setting it to the byte limit's share of one row makes
 * the byte limit apply after flush_rows rows.  In binary mode nothing else
 * reads line_buf (not even the error context callback) and nothing resets
 * it.
 */
#define BUNNY_COPY_MAX_BUFFERED_BYTES 65535
#define bunny_copy_set_binary_flush_rows(cstate, flush_rows) \
	((cstate)->line_buf.len = \
	 (BUNNY_COPY_MAX_BUFFERED_BYTES + (flush_rows) - 1) / (flush_rows))

#endif							/* BUNNYDB_COMPAT_H */
