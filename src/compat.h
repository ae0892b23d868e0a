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

#endif							/* BUNNYDB_COMPAT_H */
