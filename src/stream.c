/*-------------------------------------------------------------------------
 *
 * stream.c
 *		libpq plumbing for talking to the source: non-blocking connect,
 *		queries, and the COPY BOTH replication stream.
 *
 * Every wait goes through WaitLatchOrSocket so that a worker (or a backend
 * running a bunny function) stays responsive to SIGTERM, query cancel and
 * postmaster death while the source is slow or unreachable; libpq's own
 * blocking calls are never used for anything that waits on the network.
 *
 * PGresult and PGconn are malloc'd by libpq: results are always copied out
 * and cleared before raising an error, which would skip the PQclear.
 *
 * This is transport only: what is asked of the source is source.c's.
 * PostgreSQL's libpqwalreceiver offers the same transport, but on 15 its
 * connection is opaque, so a peer made by a non-superuser could not be
 * held to authenticating with a password (bunny_require_password needs
 * PQconnectionUsedPassword); 16's must_use_password would allow the move.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"
#include "source.h"

#include "access/xlogdefs.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#define CONNECT_TIMEOUT_MS	30000

/*
 * libpq's message for a failed connection, made safe to show: a malformed
 * conninfo can make libpq quote a piece of it, and that piece could be a
 * password.
 */
char *
stream_scrub_conninfo_error(const char *msg)
{
	char	   *copy = pchomp(msg ? msg : "");

	if (strstr(copy, "connection info string") != NULL ||
		strstr(copy, "invalid URI") != NULL ||
		strstr(copy, "URI query") != NULL)
		return pstrdup("the connection string is malformed");
	return copy;
}

/*
 * The name a server message ends with after prefix ("must be owner of
 * table orders"), or NULL.  PostgreSQL puts the bare name there, unquoted.
 */
static const char *
name_after(const char *msg, const char *prefix)
{
	const char *p = strstr(msg, prefix);

	if (p == NULL || p[strlen(prefix)] == '\0')
		return NULL;
	return p + strlen(prefix);
}

/*
 * Ask the source a catalog question for a hint, on the connection whose
 * statement just failed.  Returns the rows (caller PQclears them), or NULL
 * when the question cannot be asked or fails: the hint then keeps its
 * placeholder.
 *
 * Outside a transaction the failed statement was its own, and the
 * connection is ready.  A transaction the error aborted (the snapshot's
 * COPY) can only be rolled back, so it is, first: no caller goes on in it
 * (none uses savepoints), and its exported snapshot was lost with the
 * error.  A walsender (replication=database) runs SQL too, in the simple
 * query protocol used here, but not while it streams, nor with results
 * still to be read: then nothing is asked.
 *
 * A connection lost while asking must not replace the error being
 * reported with its own; interrupts and everything else still propagate.
 */
static PGresult *
hint_query(PGconn *conn, const char *sql)
{
	MemoryContext cxt = CurrentMemoryContext;
	PGresult   *volatile res = NULL;
	PGTransactionStatusType ts = PQtransactionStatus(conn);

	if (PQstatus(conn) != CONNECTION_OK ||
		(ts != PQTRANS_IDLE && ts != PQTRANS_INERROR))
		return NULL;
	PG_TRY();
	{
		if (ts == PQTRANS_INERROR)
		{
			res = stream_exec(conn, "ROLLBACK");
			if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK)
			{
				PQclear(res);
				res = stream_exec(conn, sql);
			}
		}
		else
			res = stream_exec(conn, sql);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_CONNECTION_FAILURE)
			PG_RE_THROW();
		FlushErrorState();
		res = NULL;
	}
	PG_END_TRY();
	if (res != NULL && PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		PQclear(res);
		res = NULL;
	}
	return res;
}

/*
 * The hint for "must be owner of table <relname>" (CREATE or ALTER
 * PUBLICATION): the schema-qualified table and its owner, looked up on the
 * source among the tables of that name the role does not own (the message
 * names no schema); placeholders when that is not one table.
 */
static char *
owner_hint(PGconn *conn, const char *role, const char *relname)
{
	PGresult   *res = NULL;

	if (relname)
		res = hint_query(conn,
						 psprintf("SELECT n.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner) "
								  "  FROM pg_catalog.pg_class c "
								  "  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
								  " WHERE c.relname = %s AND c.relkind IN ('r', 'p') "
								  "   AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE') "
								  " LIMIT 2",
								  quote_literal_cstr(relname)));
	if (res != NULL && PQntuples(res) == 1)
	{
		char	   *nsp = pstrdup(PQgetvalue(res, 0, 0));
		char	   *rel = pstrdup(PQgetvalue(res, 0, 1));
		char	   *owner = pstrdup(PQgetvalue(res, 0, 2));

		PQclear(res);
		return psprintf("Only an owner may publish a table: on the source, make %s the owner of %s or a member of its owning role (GRANT %s TO %s), or give the peer a superuser.",
						role, quote_qualified_identifier(nsp, rel),
						quote_identifier(owner), role);
	}
	if (res != NULL)
		PQclear(res);
	return psprintf("Only an owner may publish a table: on the source, make %s the table's owner or a member of its owning role (GRANT <owner> TO %s), or give the peer a superuser.",
					role, role);
}

/*
 * The hint for "permission denied for table (or sequence) <relname>": the
 * name from the message, schema-qualified when the source has exactly one
 * relation of that name the role may not read.
 */
static char *
select_hint(PGconn *conn, const char *role, const char *relname, bool sequence)
{
	const char *all = sequence ? "SEQUENCES" : "TABLES";
	PGresult   *res = NULL;

	if (relname == NULL)
		return psprintf("Run GRANT SELECT ON <%s> TO %s on the source (GRANT SELECT ON ALL %s IN SCHEMA <schema> for a whole schema).",
						sequence ? "sequence" : "table", role, all);
	res = hint_query(conn,
					 psprintf("SELECT n.nspname "
							  "  FROM pg_catalog.pg_class c "
							  "  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
							  " WHERE c.relname = %s AND c.relkind IN (%s) "
							  "   AND NOT pg_catalog.has_table_privilege(c.oid, 'SELECT') "
							  " LIMIT 2",
							  quote_literal_cstr(relname),
							  sequence ? "'S'" : "'r', 'p'"));
	if (res != NULL && PQntuples(res) == 1)
	{
		char	   *nsp = pstrdup(PQgetvalue(res, 0, 0));

		PQclear(res);
		return psprintf("Run GRANT SELECT ON %s TO %s on the source (GRANT SELECT ON ALL %s IN SCHEMA %s for a whole schema).",
						quote_qualified_identifier(nsp, relname), role, all,
						quote_identifier(nsp));
	}
	if (res != NULL)
		PQclear(res);
	return psprintf("Run GRANT SELECT ON %s TO %s on the source (GRANT SELECT ON ALL %s IN SCHEMA <schema> for a whole schema).",
					quote_identifier(relname), role, all);
}

/*
 * A hint naming the fix, for the errors a source gives when bunnydb's role
 * lacks a privilege or the source a setting.  The source's own messages
 * say what is missing but not what to run; role and database are the
 * connection's, a schema or table the message's, and a table's schema and
 * owner are asked of the source on the same connection (hint_query).
 * Matched on the SQLSTATE and on the server's message (libpq reports a
 * refused connection as text only), in English: with another lc_messages
 * on the source, only the SQLSTATE cases apply.
 *
 * A refused connection may be create_peer's, validating a peer it has not
 * stored yet, or any later one's: the hints name both functions.
 */
static char *
source_error_hint(PGconn *conn, const char *sqlstate, const char *msg)
{
	const char *role = quote_identifier(PQuser(conn) ? PQuser(conn) : "...");
	const char *db = quote_identifier(PQdb(conn) ? PQdb(conn) : "...");
	bool		denied = sqlstate && strcmp(sqlstate, "42501") == 0;
	const char *name;

	if (strstr(msg, "pg_hba.conf"))
		return psprintf("Add a line for database %s, role %s and this server's address to the source's pg_hba.conf (bunnydb's logical replication connections match the database's lines), then reload the source with SELECT pg_reload_conf().",
						db, role);
	if (strstr(msg, "password authentication failed"))
		return pstrdup("Correct the password in the connection string (bunny.create_peer() for a new peer, bunny.alter_peer() for an existing one), or keep it in a password file the server reads (README, \"Keeping the password out of the server log\").");
	if (strstr(msg, "max_wal_senders") ||
		(sqlstate && strcmp(sqlstate, "53300") == 0 && strstr(msg, "standby")))
		return pstrdup("Raise max_wal_senders on the source and restart it: each running mirror holds one WAL sender, and resuming an interrupted initial copy one more.");
	if (strstr(msg, "too many clients") || strstr(msg, "connection slots are reserved"))
		return pstrdup("Raise max_connections on the source, or lower the mirror's snapshot_max_workers: each snapshot worker holds one connection during the initial copy.");
	if (strstr(msg, "replication role") || strstr(msg, "REPLICATION attribute") ||
		strstr(msg, "permission denied to start WAL sender"))
		return psprintf("Run ALTER ROLE %s REPLICATION on the source.", role);
	if (strstr(msg, "wal_level"))
		return pstrdup("Set wal_level = logical on the source (ALTER SYSTEM SET wal_level = logical) and restart it.");
	if ((sqlstate && strcmp(sqlstate, "53400") == 0 && strstr(msg, "slot")) ||
		strstr(msg, "max_replication_slots"))
		return pstrdup("Raise max_replication_slots on the source and restart it, or drop a slot nobody uses (see pg_replication_slots on the source).");
	if (denied && strstr(msg, "permission denied for database"))
		return psprintf("Run GRANT CREATE ON DATABASE %s TO %s on the source: the mirror's publication is created there.",
						db, role);
	if (denied && strstr(msg, "must be owner of"))
	{
		/* "relation" on a PostgreSQL 10 source */
		name = name_after(msg, "must be owner of table ");
		if (name == NULL)
			name = name_after(msg, "must be owner of relation ");
		return owner_hint(conn, role, name);
	}
	if (denied && strstr(msg, "permission denied for schema"))
	{
		name = name_after(msg, "permission denied for schema ");
		return psprintf("Run GRANT USAGE ON SCHEMA %s TO %s on the source.",
						name ? quote_identifier(name) : "<schema>", role);
	}
	if (denied && strstr(msg, "permission denied for sequence"))
		return select_hint(conn, role, name_after(msg, "permission denied for sequence "), true);
	if (denied && (strstr(msg, "permission denied for table") ||
				   strstr(msg, "permission denied for relation")))
	{
		name = name_after(msg, "permission denied for table ");
		if (name == NULL)
			name = name_after(msg, "permission denied for relation ");
		return select_hint(conn, role, name, false);
	}
	if (strstr(msg, "Connection refused") || strstr(msg, "could not translate host name") ||
		strstr(msg, "No route to host") || strstr(msg, "timeout expired"))
		return pstrdup("Check host and port in the connection string (bunny.create_peer() for a new peer, bunny.alter_peer() for an existing one), and that the source is running and listening on that address (listen_addresses).");
	/* a unix socket: "... No such file or directory  Is the server running locally ..." */
	if (strstr(msg, "Is the server running locally"))
		return pstrdup("Check host (the socket directory) and port in the connection string (bunny.create_peer() for a new peer, bunny.alter_peer() for an existing one), and that the source is running with a socket there (unix_socket_directories).");
	return NULL;
}

/* wait until the socket is ready or the latch is set */
static void
wait_socket(PGconn *conn, int events, long timeout_ms)
{
	int			rc;

	rc = WaitLatchOrSocket(MyLatch,
						   WL_EXIT_ON_PM_DEATH | WL_LATCH_SET | events |
						   (timeout_ms >= 0 ? WL_TIMEOUT : 0),
						   PQsocket(conn), timeout_ms, PG_WAIT_EXTENSION);
	if (rc & WL_LATCH_SET)
		ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * Open a connection to the source.  replication=true opens a logical
 * replication connection (replication=database) that can also run SQL.
 */
PGconn *
stream_connect(const char *conninfo, const char *appname, bool replication)
{
	const char *keys[6];
	const char *vals[6];
	int			n = 0;
	PGconn	   *volatile conn;
	volatile PostgresPollingStatusType status = PGRES_POLLING_WRITING;
	TimestampTz deadline;

	keys[n] = "dbname";
	vals[n++] = conninfo;
	if (replication)
	{
		keys[n] = "replication";
		vals[n++] = "database";
	}
	keys[n] = "fallback_application_name";
	vals[n++] = appname;
	keys[n] = "client_encoding";
	vals[n++] = GetDatabaseEncodingName();
	keys[n] = NULL;
	vals[n] = NULL;

	conn = PQconnectStartParams(keys, vals, true);
	if (conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while connecting to the source")));

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), CONNECT_TIMEOUT_MS);
	while (PQstatus(conn) != CONNECTION_BAD && status != PGRES_POLLING_OK &&
		   status != PGRES_POLLING_FAILED)
	{
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

		if (left <= 0)
		{
			PQfinish(conn);
			ereport(ERROR,
					(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
					 errmsg("could not connect to the source: timeout after %d ms",
							CONNECT_TIMEOUT_MS)));
		}
		PG_TRY();
		{
			wait_socket(conn, status == PGRES_POLLING_READING ?
						WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE, Min(left, 1000));
		}
		PG_CATCH();
		{
			PQfinish(conn);
			PG_RE_THROW();
		}
		PG_END_TRY();
		status = PQconnectPoll(conn);
	}

	if (PQstatus(conn) != CONNECTION_OK)
	{
		char	   *msg = stream_scrub_conninfo_error(PQerrorMessage(conn));
		char	   *hint = source_error_hint(conn, NULL, msg);

		PQfinish(conn);
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("could not connect to the source: %s", msg),
				 hint ? errhint("%s", hint) : 0));
	}
	if (PQsetnonblocking(conn, 1) != 0)
	{
		PQfinish(conn);
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not set the source connection to non-blocking mode")));
	}
	return conn;
}

/*
 * Connections for someone who is not a superuser must authenticate with the
 * password the conninfo carries: otherwise a conninfo pointing at a server
 * that trusts this machine would hand out the server OS user's own access
 * (dblink's rule).  The caller is the role outside any SECURITY DEFINER
 * function; workers check the flag bunny.peer keeps for them.
 */
void
bunny_require_password(PGconn *conn, bool required)
{
	if (!required || PQconnectionUsedPassword(conn))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
			 errmsg("password is required"),
			 errdetail("A peer created by a non-superuser must authenticate with a password in its connection string, and the source must ask for it."),
			 errhint("Put password=... in the conninfo, or have a superuser create the peer.")));
}

/* close a connection; safe to call twice */
void
stream_disconnect(PGconn **conn)
{
	if (*conn != NULL)
	{
		PQfinish(*conn);
		*conn = NULL;
	}
}

/* send the pending output, waiting for the socket as needed */
static void
flush_output(PGconn *conn)
{
	int			r;

	while ((r = PQflush(conn)) == 1)
		wait_socket(conn, WL_SOCKET_WRITEABLE | WL_SOCKET_READABLE, 1000);
	if (r < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not send data to the source: %s",
						pchomp(PQerrorMessage(conn)))));
}

/*
 * Wait for the results of the statement just sent and return the last one
 * (caller PQclears it), or NULL if the connection broke.  Stops early at
 * COPY states, so that START_REPLICATION and COPY TO STDOUT can use it too.
 */
static PGresult *
collect_result(PGconn *conn)
{
	PGresult   *volatile last = NULL;

	flush_output(conn);

	for (;;)
	{
		PGresult   *res;

		while (PQisBusy(conn))
		{
			PG_TRY();
			{
				wait_socket(conn, WL_SOCKET_READABLE, -1);
			}
			PG_CATCH();
			{
				if (last)
					PQclear(last);
				PG_RE_THROW();
			}
			PG_END_TRY();
			if (!PQconsumeInput(conn))
			{
				if (last)
					PQclear(last);
				return NULL;
			}
		}
		res = PQgetResult(conn);
		if (res == NULL)
			break;
		if (last)
			PQclear(last);
		last = res;
		if (PQresultStatus(res) == PGRES_COPY_BOTH ||
			PQresultStatus(res) == PGRES_COPY_OUT ||
			PQresultStatus(res) == PGRES_COPY_IN)
			break;
	}
	return last;
}

/*
 * Run one statement (simple query protocol) and return its last result,
 * or NULL if the connection broke; see collect_result.
 */
PGresult *
stream_exec(PGconn *conn, const char *sql)
{
	if (!PQsendQuery(conn, sql))
		return NULL;
	return collect_result(conn);
}

/*
 * Run one statement with text parameters $1..$n (extended query
 * protocol), so that values never have to be spliced into the SQL text.
 * A walsender refuses the extended protocol: replication connections use
 * source_query, which splices literals for them.
 */
PGresult *
stream_exec_params(PGconn *conn, const char *sql, int nparams, const char *const *values)
{
	if (!PQsendQueryParams(conn, sql, nparams, NULL, values, NULL, NULL, 0))
		return NULL;
	return collect_result(conn);
}

/*
 * Raise the error a failed result carries (with the source's SQLSTATE and
 * message); res may be NULL for a broken connection.  Clears res.
 */
void
stream_raise_result(PGconn *conn, PGresult *res)
{
	char	   *msg;
	char	   *detail = NULL;
	char	   *hint;
	char	   *source_hint = NULL;
	int			code = ERRCODE_CONNECTION_FAILURE;
	const char *state = NULL;

	if (res == NULL)
		msg = pchomp(PQerrorMessage(conn));
	else
	{
		const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
		const char *det = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
		const char *hnt = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);

		state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		state = state ? pstrdup(state) : NULL;
		msg = primary ? pstrdup(primary) : pchomp(PQresultErrorMessage(res));
		if (det)
			detail = pstrdup(det);
		if (hnt)
			source_hint = pstrdup(hnt);
		if (state && strlen(state) == 5)
			code = MAKE_SQLSTATE(state[0], state[1], state[2], state[3], state[4]);
		else
			code = ERRCODE_PROTOCOL_VIOLATION;
		if (*msg == '\0')
			msg = psprintf("unexpected result status %s", PQresStatus(PQresultStatus(res)));
		PQclear(res);
	}
	/* the detail may say more than the message (16's WAL sender refusal) */
	hint = source_error_hint(conn, state, msg);
	if (hint == NULL && detail != NULL)
		hint = source_error_hint(conn, state, detail);
	if (hint == NULL)
		hint = source_hint;
	ereport(ERROR,
			(errcode(code),
			 errmsg("source: %s", msg),
			 detail ? errdetail_internal("%s", detail) : 0,
			 hint ? errhint("%s", hint) : 0));
}

/* Like stream_exec, but raise unless the result has the expected status */
PGresult *
stream_exec_ok(PGconn *conn, const char *sql, ExecStatusType expected)
{
	PGresult   *res = stream_exec(conn, sql);

	if (res != NULL && PQresultStatus(res) == expected)
		return res;
	stream_raise_result(conn, res);
	return NULL;				/* keep compiler quiet */
}

/* run a statement that returns no rows, raising on failure */
void
stream_exec_command(PGconn *conn, const char *sql)
{
	PGresult   *res = stream_exec(conn, sql);

	if (res != NULL && (PQresultStatus(res) == PGRES_COMMAND_OK ||
						PQresultStatus(res) == PGRES_TUPLES_OK))
	{
		PQclear(res);
		return;
	}
	stream_raise_result(conn, res);
}

/*
 * Create a pgoutput slot (temporary: dropped with the connection); returns
 * its consistent point and, when asked to export one, the snapshot's name,
 * which stays valid while conn runs nothing else.
 */
XLogRecPtr
stream_create_slot(PGconn *conn, const char *name, bool temporary, bool export_snapshot,
				   char **snapshot)
{
	PGresult   *res;
	XLogRecPtr	lsn;

	res = stream_exec_ok(conn,
						 psprintf("CREATE_REPLICATION_SLOT %s %sLOGICAL pgoutput %s",
								  quote_identifier(name), temporary ? "TEMPORARY " : "",
								  export_snapshot ? "EXPORT_SNAPSHOT" : "NOEXPORT_SNAPSHOT"),
						 PGRES_TUPLES_OK);
	lsn = DatumGetLSN(DirectFunctionCall1(pg_lsn_in, CStringGetDatum(PQgetvalue(res, 0, 1))));
	if (snapshot)
		*snapshot = PQgetisnull(res, 0, 2) ? NULL : pstrdup(PQgetvalue(res, 0, 2));
	PQclear(res);
	return lsn;
}

/*
 * Enter the COPY BOTH stream of a logical slot.  Protocol version 1 sends
 * each transaction whole, after its commit; with streaming, version 2 also
 * sends large transactions in progress (see applyxact.c).
 */
void
stream_start_replication(PGconn *conn, const char *slot, XLogRecPtr startpos,
						 const char *publication, bool binary, bool streaming)
{
	char	   *sql;
	PGresult   *res;

	sql = psprintf("START_REPLICATION SLOT %s LOGICAL %X/%X "
				   "(proto_version '%d', publication_names %s%s%s)",
				   quote_identifier(slot), LSN_FORMAT_ARGS(startpos),
				   streaming ? 2 : 1,
				   quote_literal_cstr(quote_identifier(publication)),
				   binary ? ", binary 'true'" : "",
				   streaming ? ", streaming 'on'" : "");
	res = stream_exec_ok(conn, sql, PGRES_COPY_BOTH);
	PQclear(res);
}

/*
 * Receive one message of the COPY BOTH stream without blocking.  Returns
 * its length (>0, *buffer to be PQfreemem'd), 0 when nothing is waiting
 * (*wait_fd is the socket to wait on), or raises when the stream ended.
 */
int
stream_receive(PGconn *conn, char **buffer, pgsocket *wait_fd)
{
	int			len;

	*buffer = NULL;
	len = PQgetCopyData(conn, buffer, 1);
	if (len == 0)
	{
		if (!PQconsumeInput(conn))
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("lost the connection to the source: %s",
							pchomp(PQerrorMessage(conn)))));
		len = PQgetCopyData(conn, buffer, 1);
		if (len == 0)
		{
			*wait_fd = PQsocket(conn);
			return 0;
		}
	}
	if (len > 0)
		return len;

	if (len == -1)
	{
		/* the source ended the stream; fetch its reason */
		PGresult   *res = PQgetResult(conn);
		char	   *msg;
		int			code = ERRCODE_CONNECTION_FAILURE;

		if (res && PQresultStatus(res) == PGRES_FATAL_ERROR)
		{
			const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

			msg = pchomp(PQresultErrorMessage(res));
			if (state && strlen(state) == 5)
				code = MAKE_SQLSTATE(state[0], state[1], state[2], state[3], state[4]);
		}
		else
			msg = pstrdup("the source ended the replication stream");
		if (res)
			PQclear(res);
		ereport(ERROR, (errcode(code), errmsg("source: %s", msg)));
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not receive data from the source: %s",
					pchomp(PQerrorMessage(conn)))));
	return -1;					/* keep compiler quiet */
}

/* send one CopyData message on the stream */
void
stream_send(PGconn *conn, const char *data, int len)
{
	int			r;

	/* 0 means libpq's buffer is full in non-blocking mode: wait and retry */
	while ((r = PQputCopyData(conn, data, len)) == 0)
		wait_socket(conn, WL_SOCKET_WRITEABLE, 1000);
	if (r < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not send data to the source: %s",
						pchomp(PQerrorMessage(conn)))));
	flush_output(conn);
}
