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

#endif							/* BUNNYDB_COMPAT_H */
