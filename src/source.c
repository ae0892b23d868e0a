/*-------------------------------------------------------------------------
 *
 * source.c
 *		Every question bunnydb asks of the source database, and every
 *		change it makes there, one function each, with typed answers (in
 *		the spirit of pglogical_rpc.c).
 *
 * The phases (setup.c, snapshot.c, resync.c, the apply), the worker and
 * the SQL API's C functions (functions.c) call these instead of writing
 * SQL for the source themselves, so that each fact about the source is
 * fetched in one place and the PL/pgSQL API shares it (bunny._test_peer,
 * bunny._source_drop_slot and the other bunny._source_* functions).
 *
 * Values are passed as parameters (PQsendQueryParams) on plain
 * connections.  A replication connection (replication=database, which
 * setup and the apply use) is a walsender, and PostgreSQL refuses the
 * extended query protocol there ("extended query protocol not supported
 * in a replication connection"): for those source_query splices the same
 * parameters in as quoted literals, so every query is still written once,
 * with $n.  Identifiers and the operands of utility statements (CREATE
 * PUBLICATION, COMMENT ON, SET TRANSACTION SNAPSHOT, COPY) cannot be
 * parameters on any connection: those are quoted with quote_identifier
 * and quote_literal_cstr where they are built.
 *
 * Functions by role:
 *
 *	connection and capabilities
 *		source_query				run one statement with $n parameters
 *		source_info					version and capabilities (SourceInfo),
 *									asked once per connection
 *		mirror_connect				a mirror's connection, plain or
 *									replication, held to its password rule
 *		source_connect_as_caller	plain connection for the SQL API
 *	checks
 *		source_check				wal_level and REPLICATION, or an error
 *		source_problems				the same, as test_peer's text
 *	tables: sourcedesc.c; user-defined types: sourcetypes.c
 *	publication and slot
 *		source_publication_exists	and its comment
 *		source_ensure_publication	create ours, or check and refresh it
 *		source_drop_publication
 *		source_slot_exists			and its holder and confirmed position
 *		source_drop_slot			terminate its holder and drop it
 *		source_terminate_backend	end a stale walsender
 *	positions and values
 *		source_current_wal_lsn
 *		source_sequence_value
 *		source_import_snapshot		start a transaction in an exported
 *									snapshot
 *		source_copy_out				start the COPY of one part of a table
 *
 *-------------------------------------------------------------------------
 */
#include "source.h"

#include <ctype.h>

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "libpq-events.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

/* a schema-qualified, quoted name */
const char *
source_qname(const char *schema, const char *name)
{
	return quote_qualified_identifier(schema, name);
}

/*
 * Is conn a walsender connection?  libpq keeps the replication option it
 * connected with; stream_connect sets "database" for ours.
 */
static bool
is_replication_conn(PGconn *conn)
{
	PQconninfoOption *opts = PQconninfo(conn);
	bool		result = false;

	if (opts == NULL)
		return false;
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
		if (strcmp(o->keyword, "replication") == 0 && o->val != NULL && o->val[0] != '\0')
			result = strcmp(o->val, "0") != 0 && pg_strcasecmp(o->val, "false") != 0 &&
				pg_strcasecmp(o->val, "off") != 0 && pg_strcasecmp(o->val, "no") != 0;
	PQconninfoFree(opts);
	return result;
}

/*
 * sql with $n replaced by params[n-1] as a quoted literal (NULL for a
 * null), for a walsender, which only speaks the simple query protocol.
 * The statements are ours: a "$" followed by digits is always a parameter
 * in them (none uses dollar quoting).
 */
static char *
splice_params(const char *sql, int nparams, const char *const *params)
{
	StringInfoData buf;
	const char *p = sql;

	initStringInfo(&buf);
	while (*p)
	{
		if (p[0] == '$' && isdigit((unsigned char) p[1]))
		{
			int			n = 0;

			p++;
			while (isdigit((unsigned char) *p))
				n = n * 10 + (*p++ - '0');
			if (n < 1 || n > nparams)
				elog(ERROR, "parameter $%d out of range in a query for the source", n);
			if (params[n - 1] == NULL)
				appendStringInfoString(&buf, "NULL");
			else
				appendStringInfoString(&buf, quote_literal_cstr(params[n - 1]));
			continue;
		}
		appendStringInfoChar(&buf, *p++);
	}
	return buf.data;
}

/* run sql with its parameters; the result as it is (NULL: connection lost) */
static PGresult *
source_exec(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
	if (nparams == 0)
		return stream_exec(conn, sql);
	if (is_replication_conn(conn))
		return stream_exec(conn, splice_params(sql, nparams, params));
	return stream_exec_params(conn, sql, nparams, params);
}

/*
 * Run one statement with parameters $1..$nparams (text, NULL for a null),
 * and raise the source's error unless the result has the expected status.
 * The caller PQclears the result.
 */
PGresult *
source_query(PGconn *conn, const char *sql, int nparams, const char *const *params,
			 ExecStatusType expected)
{
	PGresult   *res = source_exec(conn, sql, nparams, params);

	if (res != NULL && PQresultStatus(res) == expected)
		return res;
	stream_raise_result(conn, res);
	return NULL;				/* keep compiler quiet */
}

/* a text[] literal of a list of C strings, to pass as one parameter */
char *
source_text_array(List *items)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	foreach(lc, items)
	{
		const char *s = lfirst(lc);

		if (lc != list_head(items))
			appendStringInfoChar(&buf, ',');
		appendStringInfoChar(&buf, '"');
		for (; *s; s++)
		{
			if (*s == '"' || *s == '\\')
				appendStringInfoChar(&buf, '\\');
			appendStringInfoChar(&buf, *s);
		}
		appendStringInfoChar(&buf, '"');
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* an OID as a parameter value */
char *
source_oid_text(Oid oid)
{
	return psprintf("%u", oid);
}

/*
 * What source_info learnt of a connection is kept with the connection, as
 * libpq event instance data, for the life of the connection: a phase asks
 * for the version in several places, and each question would otherwise be
 * a round trip.  libpq calls source_info_event when the connection is
 * closed, however it is closed, so the stream layer below need not know
 * about it.
 */
static int
source_info_event(PGEventId id, void *event_info, void *pass_through)
{
	if (id == PGEVT_CONNDESTROY)
	{
		PGEventConnDestroy *ev = event_info;
		SourceInfo *info = PQinstanceData(ev->conn, source_info_event);

		if (info != NULL)
		{
			pfree(info->wal_level);
			pfree(info->version_text);
			pfree(info);
		}
	}
	return 1;
}

/*
 * Version and capabilities of conn's server, and whether the role may
 * replicate.  The first call also fixes the session's search_path to
 * pg_catalog, so that no object of the source's users can stand in for a
 * catalog function in what we ask later.
 */
SourceInfo *
source_info(PGconn *conn)
{
	PGresult   *res;
	SourceInfo *info;
	MemoryContext old;

	info = PQinstanceData(conn, source_info_event);
	if (info != NULL)
		return info;

	/*
	 * Our catalog queries are small: JIT compiling one costs more than
	 * running it (with some thousands of tables the planner's estimates
	 * cross jit_above_cost and every query of setup took 40 ms more).
	 */
	res = source_query(conn, "SELECT pg_catalog.set_config('search_path', 'pg_catalog', false), "
					   "       pg_catalog.set_config('jit', 'off', false)",
					   0, NULL, PGRES_TUPLES_OK);
	PQclear(res);
	res = source_query(conn,
					   "SELECT pg_catalog.current_setting('wal_level'), "
					   "       pg_catalog.current_setting('server_version_num')::int, "
					   "       pg_catalog.current_setting('server_version'), "
					   "       (SELECT rolsuper OR rolreplication FROM pg_catalog.pg_roles "
					   "         WHERE rolname = current_user)",
					   0, NULL, PGRES_TUPLES_OK);

	old = MemoryContextSwitchTo(TopMemoryContext);
	info = palloc0(sizeof(SourceInfo));
	info->wal_level = pstrdup(PQgetvalue(res, 0, 0));
	info->version = atoi(PQgetvalue(res, 0, 1));
	info->version_text = pstrdup(PQgetvalue(res, 0, 2));
	info->can_replicate = strcmp(PQgetvalue(res, 0, 3), "t") == 0;
	info->replication_conn = is_replication_conn(conn);
	info->publish_partitioned = info->version >= 130000;
	info->binary = info->version >= 140000;
	info->streaming = info->version >= 140000;
	info->column_lists = info->version >= 150000;
	MemoryContextSwitchTo(old);
	PQclear(res);
	if (!PQregisterEventProc(conn, source_info_event, "bunnydb source info", NULL) ||
		!PQsetInstanceData(conn, source_info_event, info))
	{
		pfree(info->wal_level);
		pfree(info->version_text);
		pfree(info);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not keep the source's version with its connection")));
	}
	return info;
}

/*
 * Connect to the mirror's source as bunnydb:<mirror>, holding a peer made
 * by a non-superuser to its password; a password refused is an error
 * retrying cannot cure.  The worker and every phase connect this way.
 */
PGconn *
mirror_connect(Mirror *m, bool replication)
{
	PGconn	   *conn = stream_connect(m->conninfo, psprintf("bunnydb:%s", m->name), replication);

	PG_TRY();
	{
		bunny_require_password(conn, m->require_password);
	}
	PG_CATCH();
	{
		PQfinish(conn);
		bunny_mark_permanent();
		PG_RE_THROW();
	}
	PG_END_TRY();
	return conn;
}

/*
 * A plain connection for a function of the SQL API, held to the password
 * rule for the role calling it (bunny_require_password).
 */
PGconn *
source_connect_as_caller(const char *conninfo)
{
	PGconn	   *conn = stream_connect(conninfo, "bunnydb", false);

	PG_TRY();
	{
		bunny_require_password(conn, !superuser_arg(GetOuterUserId()));
	}
	PG_CATCH();
	{
		PQfinish(conn);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return conn;
}

/*
 * Check that the source can be replicated from: wal_level = logical, and a
 * role with REPLICATION (or SUPERUSER).  Returns its SourceInfo.
 */
SourceInfo *
source_check(PGconn *conn)
{
	SourceInfo *info = source_info(conn);

	if (strcmp(info->wal_level, "logical") != 0)
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("source wal_level is \"%s\", it must be \"logical\"", info->wal_level),
				 errhint("Set wal_level = logical on the source (ALTER SYSTEM SET wal_level = logical) and restart it.")));
	}
	if (!info->can_replicate)
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the source role has neither the REPLICATION nor the SUPERUSER attribute"),
				 errhint("Run ALTER ROLE %s REPLICATION on the source.",
						 quote_identifier(PQuser(conn)))));
	}
	return info;
}

/*
 * What source_check would refuse, as bunny.test_peer reports it: the
 * problems joined by "; ", or NULL when there are none.
 */
char *
source_problems(SourceInfo *info)
{
	StringInfoData buf;

	initStringInfo(&buf);
	if (strcmp(info->wal_level, "logical") != 0)
		appendStringInfo(&buf, "wal_level is \"%s\", it must be \"logical\"", info->wal_level);
	if (!info->can_replicate)
		appendStringInfo(&buf, "%sthe role has neither REPLICATION nor SUPERUSER",
						 buf.len ? "; " : "");
	return buf.len ? buf.data : NULL;
}

/*
 * Does publication pubname exist?  *comment (when asked) gets its comment,
 * NULL without one: the comment says which mirror incarnation made it.
 */
bool
source_publication_exists(PGconn *conn, const char *pubname, char **comment)
{
	PGresult   *res;
	bool		exists;
	const char *params[1] = {pubname};

	res = source_query(conn,
					   "SELECT pg_catalog.obj_description(p.oid, 'pg_publication') "
					   "  FROM pg_catalog.pg_publication p WHERE p.pubname = $1",
					   1, params, PGRES_TUPLES_OK);
	exists = PQntuples(res) > 0;
	if (comment)
		*comment = exists && !PQgetisnull(res, 0, 0) ? pstrdup(PQgetvalue(res, 0, 0)) : NULL;
	PQclear(res);
	return exists;
}

/*
 * Create m's publication for tables, or, when it exists and its comment
 * names m's incarnation, set its table list.  A publication of that name
 * that is not ours is an error.  The statements are utility commands,
 * which take no parameters: names and the comment are quoted into them.
 */
void
source_ensure_publication(PGconn *conn, Mirror *m, List *tables)
{
	SourceInfo *info = source_info(conn);
	StringInfoData tl;
	char	   *comment = psprintf("bunnydb mirror %s incarnation %s", m->name, m->incarnation);
	char	   *have;
	ListCell   *lc;
	bool		exists;

	initStringInfo(&tl);
	foreach(lc, tables)
	{
		SourceTable *st = lfirst(lc);
		bool		has_excluded = false;
		ListCell   *lc2;

		foreach(lc2, st->columns)
			if (((SourceColumn *) lfirst(lc2))->excluded)
				has_excluded = true;

		appendStringInfo(&tl, "%s%s%s", tl.len ? ", " : "",
						 st->relkind == 'r' ? "ONLY " : "",
						 source_qname(st->mt->source_schema, st->mt->source_table));

		/*
		 * Without column lists the source sends the excluded columns too,
		 * and the apply leaves them out (apply_handle_relation).
		 */
		if (has_excluded && info->column_lists)
		{
			bool		first = true;

			appendStringInfoString(&tl, " (");
			foreach(lc2, st->columns)
			{
				SourceColumn *col = lfirst(lc2);

				if (col->excluded || col->generated)
					continue;
				appendStringInfo(&tl, "%s%s", first ? "" : ", ", quote_identifier(col->name));
				first = false;
			}
			appendStringInfoChar(&tl, ')');
		}
	}

	exists = source_publication_exists(conn, m->publication_name, &have);
	if (exists && (have == NULL || strcmp(have, comment) != 0))
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("publication \"%s\" already exists on the source and does not belong to this mirror",
						m->publication_name),
				 errhint("Drop it on the source (DROP PUBLICATION %s) if it is a leftover, then call bunny.retry_mirror().",
						 quote_identifier(m->publication_name))));
	}
	if (exists)
		stream_exec_command(conn, psprintf("ALTER PUBLICATION %s SET TABLE %s",
										   quote_identifier(m->publication_name), tl.data));
	else
	{
		/*
		 * Changes of a partition are published as the partitioned table's
		 * (13 on); a 12 source cannot publish partitioned tables at all,
		 * which source_describe_table refused.
		 */
		stream_exec_command(conn, psprintf("CREATE PUBLICATION %s FOR TABLE %s%s",
										   quote_identifier(m->publication_name), tl.data,
										   info->publish_partitioned ?
										   " WITH (publish_via_partition_root = true)" : ""));
		stream_exec_command(conn, psprintf("COMMENT ON PUBLICATION %s IS %s",
										   quote_identifier(m->publication_name),
										   quote_literal_cstr(comment)));
		bunny_log(m->name, "INFO", psprintf("created publication %s on the source",
											m->publication_name), NULL);
	}
}

/* drop a publication if it exists (a utility command: the name is quoted in) */
void
source_drop_publication(PGconn *conn, const char *pubname)
{
	stream_exec_command(conn, psprintf("DROP PUBLICATION IF EXISTS %s", quote_identifier(pubname)));
}

/*
 * Does replication slot slot exist?  *active_pid gets the PID of the
 * walsender holding it (NULL when none holds it), *confirmed_flush its
 * confirmed position (invalid when it has none); either may be NULL.
 */
bool
source_slot_exists(PGconn *conn, const char *slot, char **active_pid,
				   XLogRecPtr *confirmed_flush)
{
	PGresult   *res;
	bool		exists;
	const char *params[1] = {slot};

	res = source_query(conn,
					   "SELECT active_pid, confirmed_flush_lsn FROM pg_catalog.pg_replication_slots "
					   " WHERE slot_name = $1",
					   1, params, PGRES_TUPLES_OK);
	exists = PQntuples(res) > 0;
	if (active_pid)
		*active_pid = exists && !PQgetisnull(res, 0, 0) ? pstrdup(PQgetvalue(res, 0, 0)) : NULL;
	if (confirmed_flush)
		*confirmed_flush = exists && !PQgetisnull(res, 0, 1) ?
			DatumGetLSN(DirectFunctionCall1(pg_lsn_in, CStringGetDatum(PQgetvalue(res, 0, 1)))) :
			InvalidXLogRecPtr;
	PQclear(res);
	return exists;
}

/*
 * Drop replication slot slot if it exists, terminating the walsender that
 * holds it.  A terminated walsender releases the slot only as it exits, so
 * the drop is tried again (with the walsender terminated again, in case a
 * new one took the slot) every 100 ms while it is in use, for up to
 * timeout_ms; then the source's error stands.  Waiting on the latch keeps
 * us responsive to cancel and shutdown, which pg_usleep would not be.
 */
void
source_drop_slot(PGconn *conn, const char *slot, int timeout_ms)
{
	const char *params[1] = {slot};
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	for (;;)
	{
		PGresult   *res;
		const char *state;

		res = source_query(conn,
						   "SELECT pg_catalog.pg_terminate_backend(active_pid) "
						   "  FROM pg_catalog.pg_replication_slots "
						   " WHERE slot_name = $1 AND active_pid IS NOT NULL",
						   1, params, PGRES_TUPLES_OK);
		PQclear(res);

		res = source_exec(conn,
						  "SELECT pg_catalog.pg_drop_replication_slot(slot_name) "
						  "  FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
						  1, params);
		if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK)
		{
			PQclear(res);
			return;
		}
		state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
		if (state == NULL || strcmp(state, "55006") != 0 ||	/* object_in_use */
			GetCurrentTimestamp() >= deadline)
			stream_raise_result(conn, res);
		PQclear(res);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Terminate the backend with PID pid (a walsender holding our slot);
 * false when the source refused (the role may not signal it).
 */
bool
source_terminate_backend(PGconn *conn, const char *pid)
{
	const char *params[1] = {pid};
	PGresult   *res = source_exec(conn, "SELECT pg_catalog.pg_terminate_backend($1::int)",
								  1, params);
	bool		ok = res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK;

	if (res)
		PQclear(res);
	return ok;
}

/* the source's current WAL write position */
XLogRecPtr
source_current_wal_lsn(PGconn *conn)
{
	PGresult   *res;
	XLogRecPtr	lsn;

	res = source_query(conn, "SELECT pg_catalog.pg_current_wal_lsn()", 0, NULL, PGRES_TUPLES_OK);
	lsn = DatumGetLSN(DirectFunctionCall1(pg_lsn_in, CStringGetDatum(PQgetvalue(res, 0, 0))));
	PQclear(res);
	return lsn;
}

/*
 * A sequence's state: its last value (as text, for setval) and is_called.
 * qualified_seq is a quoted, qualified name: a relation in FROM cannot be
 * a parameter.
 */
void
source_sequence_value(PGconn *conn, const char *qualified_seq, char **last_value,
					  bool *is_called)
{
	PGresult   *res;

	res = source_query(conn, psprintf("SELECT last_value, is_called FROM %s", qualified_seq),
					   0, NULL, PGRES_TUPLES_OK);
	*last_value = pstrdup(PQgetvalue(res, 0, 0));
	*is_called = PQgetvalue(res, 0, 1)[0] == 't';
	PQclear(res);
}

/*
 * Start COPY (SELECT columns FROM from [WHERE where]) TO STDOUT on conn,
 * the source side of copying one part of a table; the caller reads the
 * data (PQgetCopyData).  from and where are SQL the copy plan made (a
 * quoted relation, a range predicate): COPY takes no parameters.
 */
void
source_copy_out(PGconn *conn, List *columns, const char *from, const char *where,
				bool binary)
{
	StringInfoData sql;
	ListCell   *lc;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "COPY (SELECT ");
	foreach(lc, columns)
		appendStringInfo(&sql, "%s%s", lc == list_head(columns) ? "" : ", ",
						 quote_identifier((char *) lfirst(lc)));
	appendStringInfo(&sql, " FROM %s%s%s) TO STDOUT%s", from,
					 where ? " WHERE " : "", where ? where : "",
					 binary ? " (FORMAT binary)" : "");
	PQclear(source_query(conn, sql.data, 0, NULL, PGRES_COPY_OUT));
}

/*
 * Start a read-only transaction on conn that sees exactly the exported
 * snapshot snapshot_name (SET TRANSACTION takes no parameters: the name
 * is quoted in).  The caller ends it with COMMIT.
 */
void
source_import_snapshot(PGconn *conn, const char *snapshot_name)
{
	stream_exec_command(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
	stream_exec_command(conn, psprintf("SET TRANSACTION SNAPSHOT %s",
									   quote_literal_cstr(snapshot_name)));
}
