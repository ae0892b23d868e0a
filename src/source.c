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
 *	tables and types
 *		source_describe_table		one mapped table (SourceTable), checked
 *		source_describe_tables		all of a mirror's, checked together
 *		source_describe_type		a user-defined type (SourceType)
 *		source_enum_labels			an enum's labels in order
 *		source_domain_checks		a domain's CHECK constraints
 *		source_type_attributes		a composite type's attributes
 *		source_table_columns		a table's columns (SourceColumn)
 *		source_table_indexes		a table's indexes (SourceIndex)
 *		source_list_tables			the tables a mirror could map
 *		source_column_default		a column's default
 *		source_column_types			replicated columns' types (binary
 *									transfer)
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

/* mark the next error as one that retrying does not cure */

static const char *
qname(const char *schema, const char *name)
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
static char *
text_array_literal(List *items)
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

static char *
oid_text(Oid oid)
{
	return psprintf("%u", oid);
}

/* is s one of the C strings of list? */
static bool
string_in_list(List *list, const char *s)
{
	ListCell   *lc;

	foreach(lc, list)
		if (strcmp((char *) lfirst(lc), s) == 0)
			return true;
	return false;
}

/*
 * The elements of a one-dimensional text[] as the source printed it
 * ({a,"b c"}), as char *.  Parsed here rather than by array_in, which
 * needs the catalog, hence a transaction, and setup asks the source
 * outside one.  A null element (unquoted NULL) cannot occur: the arrays
 * asked for hold column names.
 */
static List *
parse_text_array(const char *literal)
{
	List	   *result = NIL;
	const char *p = literal;
	StringInfoData elem;

	if (*p++ != '{')
		elog(ERROR, "malformed array from the source: \"%s\"", literal);
	initStringInfo(&elem);
	while (*p && *p != '}')
	{
		resetStringInfo(&elem);
		if (*p == '"')
		{
			for (p++; *p && *p != '"'; p++)
			{
				if (*p == '\\' && p[1])
					p++;
				appendStringInfoChar(&elem, *p);
			}
			if (*p == '"')
				p++;
		}
		else
			while (*p && *p != ',' && *p != '}')
				appendStringInfoChar(&elem, *p++);
		result = lappend(result, pstrdup(elem.data));
		if (*p == ',')
			p++;
	}
	return result;
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
				 errhint("Set wal_level = logical on the source and restart it, then call bunny.retry_mirror().")));
	}
	if (!info->can_replicate)
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the source role has neither the REPLICATION nor the SUPERUSER attribute"),
				 errhint("Run ALTER ROLE ... REPLICATION on the source.")));
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

/* what a relkind is, for messages */
static const char *
relkind_noun(char relkind)
{
	switch (relkind)
	{
		case 'v':
			return "a view";
		case 'm':
			return "a materialized view";
		case 'f':
			return "a foreign table";
		case 'S':
			return "a sequence";
		case 'c':
			return "a composite type";
		case 'i':
		case 'I':
			return "an index";
		case 't':
			return "a TOAST table";
		default:
			return "not a table";
	}
}

/*
 * Refuse a table whose publication would make the source's own writes
 * fail.  PostgreSQL checks, at every UPDATE and DELETE of a published
 * table, that the table (for a partitioned table: the partition the row is
 * in, whatever the root's setting) has a replica identity, and that a
 * publication's column list covers it.  A mirror that got this wrong would
 * break the application on the source, so each relation the publication
 * will cover is checked here the same way, before anything is created.
 */
static void
check_replica_identities(PGconn *conn, SourceTable *st, const char *name)
{
	PGresult   *res;
	char		root_replident = 'd';
	const char *params[2];

	/*
	 * One row per relation whose replica identity matters, the table itself
	 * first, then every leaf of a partitioned table: its replica identity,
	 * whether that is usable, and an excluded column that is part of it.
	 * The oids go through an array so that pg_class is read by its index:
	 * "oid = x OR oid IN (...)" scanned all of it, once per table.
	 */
	params[0] = text_array_literal(st->mt->exclude_columns);
	params[1] = oid_text(st->relid);
	res = source_query(conn,
					   "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
					   "       c.relreplident, "
					   "       CASE c.relreplident "
					   "         WHEN 'f' THEN true WHEN 'n' THEN false "
					   "         ELSE EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid "
					   "                         AND CASE c.relreplident WHEN 'i' THEN i.indisreplident "
					   "                                                 ELSE i.indisprimary END) END, "
					   "       (SELECT min(a.attname) FROM pg_attribute a "
					   "         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
					   "           AND a.attname = ANY ($1::text[]) "
					   "           AND (c.relreplident = 'f' OR a.attnum IN "
					   "                (SELECT unnest(i.indkey) FROM pg_index i WHERE i.indrelid = c.oid "
					   "                    AND CASE c.relreplident WHEN 'i' THEN i.indisreplident "
					   "                                            ELSE i.indisprimary END))), "
					   "       c.oid = $2::oid "
					   "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
					   " WHERE c.oid = ANY (ARRAY(SELECT $2::oid UNION ALL "
					   "                          SELECT t.relid FROM pg_partition_tree($2::oid) t "
					   "                           WHERE t.isleaf)) "
					   " ORDER BY c.oid <> $2::oid, 1",
					   2, params, PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++)
	{
		const char *rel = pstrdup(PQgetvalue(res, i, 0));
		char		replident = PQgetvalue(res, i, 1)[0];
		bool		usable = PQgetvalue(res, i, 2)[0] == 't';
		bool		is_self = PQgetvalue(res, i, 4)[0] == 't';

		if (!usable)
		{
			PQclear(res);
			bunny_mark_permanent();
			if (is_self)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("source table %s has no primary key and no usable replica identity", name),
						 errdetail("Updates and deletes are replicated, and they must identify the row."),
						 errhint("Add a primary key, or run ALTER TABLE %s REPLICA IDENTITY FULL on the source.", name)));
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("partition %s of source table %s has no primary key and no usable replica identity",
							rel, name),
					 errdetail("PostgreSQL checks the replica identity of the partition a row is in, not the partitioned table's: "
							   "once published, UPDATE and DELETE of rows in %s would fail on the source.", rel),
					 errhint("Add a primary key to %s, or run ALTER TABLE %s REPLICA IDENTITY FULL on the source.",
							 rel, rel)));
		}

		/*
		 * The apply identifies rows as the partitioned table's Relation
		 * message says, but the old row comes as the partition logged it:
		 * with FULL on the root and less on a partition it would arrive
		 * incomplete and match nothing.
		 */
		if (!is_self && root_replident == 'f' && replident != 'f')
		{
			PQclear(res);
			bunny_mark_permanent();
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("partition %s of source table %s does not have REPLICA IDENTITY FULL like its partitioned table",
							rel, name),
					 errdetail("The old row of an UPDATE or DELETE is logged as the partition's replica identity says, "
							   "and the partitioned table's REPLICA IDENTITY FULL needs all of it to find the row."),
					 errhint("Run ALTER TABLE %s REPLICA IDENTITY FULL on the source.", rel)));
		}
		if (is_self)
			root_replident = replident;

		/* an excluded column must not be part of the replica identity */
		if (!PQgetisnull(res, i, 3))
		{
			char	   *ex = pstrdup(PQgetvalue(res, i, 3));

			PQclear(res);
			bunny_mark_permanent();
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("column \"%s\" of source table %s is part of %s replica identity and cannot be excluded",
							ex, name, is_self ? "its" : psprintf("partition %s's", rel)),
					 replident == 'f' ?
					 errdetail("With REPLICA IDENTITY FULL every column identifies a row, and PostgreSQL refuses UPDATE and DELETE "
							   "of a published table whose column list leaves out part of its replica identity.") :
					 errdetail("PostgreSQL refuses UPDATE and DELETE of a published table whose column list leaves out "
							   "part of its replica identity."),
					 errhint("Remove \"%s\" from exclude_columns, or give the table a primary key or replica identity index "
							 "without it on the source.", ex)));
		}
	}
	PQclear(res);
}

/*
 * The constraints and the indexes no constraint owns of st, and the leaf
 * partitions of a partitioned table.  Whether each uses an excluded column
 * is asked too: what involves one cannot be created on the destination.
 */
static void
describe_table_objects(PGconn *conn, SourceTable *st)
{
	PGresult   *res;
	const char *params[2];
	ListCell   *lc;

	params[0] = text_array_literal(st->mt->exclude_columns);
	params[1] = oid_text(st->relid);
	res = source_query(conn,
					   "SELECT c.conname, c.contype, pg_get_constraintdef(c.oid), "
					   "       ARRAY(SELECT attname FROM pg_attribute "
					   "              WHERE attrelid = c.conrelid AND attnum = ANY (c.conkey))::text[] && $1::text[], "
					   "       rn.nspname, r.relname "
					   "  FROM pg_constraint c "
					   "  LEFT JOIN pg_class r ON r.oid = c.confrelid "
					   "  LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace "
					   " WHERE c.conrelid = $2::oid AND c.contype IN ('p', 'u', 'c', 'x', 'f') "
					   " ORDER BY CASE c.contype WHEN 'p' THEN 0 ELSE 1 END, c.conname",
					   2, params, PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++)
	{
		SourceConstraint *con = palloc0(sizeof(SourceConstraint));

		con->name = pstrdup(PQgetvalue(res, i, 0));
		con->contype = PQgetvalue(res, i, 1)[0];
		con->def = pstrdup(PQgetvalue(res, i, 2));
		con->uses_excluded = PQgetvalue(res, i, 3)[0] == 't';
		if (con->contype == 'f')
		{
			con->ref_schema = pstrdup(PQgetvalue(res, i, 4));
			con->ref_table = pstrdup(PQgetvalue(res, i, 5));
		}
		st->constraints = lappend(st->constraints, con);
	}
	PQclear(res);

	foreach(lc, source_table_indexes(conn, qname(st->mt->source_schema, st->mt->source_table)))
	{
		SourceIndex *ix = lfirst(lc);
		ListCell   *lc2;

		if (ix->constraint_owned)
			continue;
		foreach(lc2, ix->columns)
			if (string_in_list(st->mt->exclude_columns, lfirst(lc2)))
				ix->uses_excluded = true;
		st->indexes = lappend(st->indexes, ix);
	}

	if (st->relkind == 'p')
	{
		res = source_query(conn,
						   "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) "
						   "  FROM pg_partition_tree($1::oid) t "
						   "  JOIN pg_class c ON c.oid = t.relid "
						   "  JOIN pg_namespace n ON n.oid = c.relnamespace "
						   " WHERE t.isleaf ORDER BY 1",
						   1, &params[1], PGRES_TUPLES_OK);
		for (int i = 0; i < PQntuples(res); i++)
			st->leaves = lappend(st->leaves, pstrdup(PQgetvalue(res, i, 0)));
		PQclear(res);
	}
}

/*
 * The columns of a source table (quoted, qualified name), in order, with
 * their types, defaults, sequences and place in the primary key; excluded
 * is left for the caller, who knows the mapping.  setup describes tables
 * with it, and bunny.sync_schema compares them (bunny._source_columns).
 */
List *
source_table_columns(PGconn *conn, const char *qualified_table)
{
	PGresult   *res;
	List	   *columns = NIL;
	const char *params[1] = {qualified_table};

	(void) source_info(conn);	/* search_path: the query's names are pg_catalog's */
	res = source_query(conn,
					   "SELECT a.attname, format_type(a.atttypid, a.atttypmod) || "
					   "       coalesce((SELECT ' COLLATE ' || quote_ident(cn.nspname) || '.' || quote_ident(co.collname) "
					   "                   FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace "
					   "                  WHERE co.oid = a.attcollation "
					   "                    AND a.attcollation <> (SELECT typcollation FROM pg_type WHERE oid = a.atttypid)), ''), "
					   "       a.attnotnull, a.atttypid, "
					   "       CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END, "
					   "       CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END, "
					   "       a.attidentity, "
					   "       ss.seq, "
					   "       coalesce((SELECT k.ord FROM pg_index i, "
					   "                        unnest(i.indkey) WITH ORDINALITY k(attnum, ord) "
					   "                  WHERE i.indrelid = a.attrelid AND i.indisprimary "
					   "                    AND k.attnum = a.attnum), 0), "
					   "       format('INCREMENT BY %s MINVALUE %s MAXVALUE %s START WITH %s CACHE %s %s', "
					   "              s.seqincrement, s.seqmin, s.seqmax, s.seqstart, s.seqcache, "
					   "              CASE WHEN s.seqcycle THEN 'CYCLE' ELSE 'NO CYCLE' END), "
					   "       format_type(s.seqtypid, NULL), ds.nspname, ds.relname "
					   "  FROM pg_attribute a "
					   "  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
					   "  CROSS JOIN LATERAL (SELECT pg_get_serial_sequence($1, a.attname) AS seq) ss "
	/* the sequence a default's nextval() names, owned or not */
					   "  LEFT JOIN LATERAL (SELECT sc.oid, sn.nspname, sc.relname "
					   "                       FROM pg_depend dep "
					   "                       JOIN pg_class sc ON sc.oid = dep.refobjid AND sc.relkind = 'S' "
					   "                       JOIN pg_namespace sn ON sn.oid = sc.relnamespace "
					   "                      WHERE dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid "
					   "                        AND dep.refclassid = 'pg_class'::regclass "
					   "                      ORDER BY sc.oid LIMIT 1) ds ON true "
					   "  LEFT JOIN pg_sequence s ON s.seqrelid = "
					   "       coalesce(ss.seq::regclass, ds.oid) "
					   " WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped "
					   " ORDER BY a.attnum",
					   1, params, PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++)
	{
		SourceColumn *col = palloc0(sizeof(SourceColumn));

		col->name = pstrdup(PQgetvalue(res, i, 0));
		col->type_sql = pstrdup(PQgetvalue(res, i, 1));
		col->notnull = PQgetvalue(res, i, 2)[0] == 't';
		col->typid = (Oid) strtoul(PQgetvalue(res, i, 3), NULL, 10);
		col->generated = PQgetisnull(res, i, 4) ? NULL : pstrdup(PQgetvalue(res, i, 4));
		col->default_expr = PQgetisnull(res, i, 5) ? NULL : pstrdup(PQgetvalue(res, i, 5));
		col->identity = PQgetvalue(res, i, 6)[0];
		col->serial_seq = PQgetisnull(res, i, 7) ? NULL : pstrdup(PQgetvalue(res, i, 7));
		col->key_position = atoi(PQgetvalue(res, i, 8));
		col->seq_options = PQgetisnull(res, i, 9) ? NULL : pstrdup(PQgetvalue(res, i, 9));
		col->seq_type = PQgetisnull(res, i, 10) ? NULL : pstrdup(PQgetvalue(res, i, 10));
		if (col->serial_seq == NULL && !PQgetisnull(res, i, 11))
		{
			col->default_seq_schema = pstrdup(PQgetvalue(res, i, 11));
			col->default_seq_name = pstrdup(PQgetvalue(res, i, 12));
		}
		columns = lappend(columns, col);
	}
	PQclear(res);
	return columns;
}

/*
 * The indexes of a source table (quoted, qualified name), by name, with
 * the columns they cover; whether a constraint owns each tells setup's
 * secondary indexes apart.  bunny.sync_schema reads them too
 * (bunny._source_indexes).
 */
List *
source_table_indexes(PGconn *conn, const char *qualified_table)
{
	PGresult   *res;
	List	   *indexes = NIL;
	const char *params[1] = {qualified_table};

	(void) source_info(conn);
	res = source_query(conn,
					   "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisprimary, "
					   "       EXISTS (SELECT 1 FROM pg_constraint k "
					   "                WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid), "
					   "       ARRAY(SELECT attname FROM pg_attribute "
					   "              WHERE attrelid = i.indrelid AND attnum = ANY (i.indkey))::text[] "
					   "  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
					   " WHERE i.indrelid = $1::regclass "
					   " ORDER BY c.relname",
					   1, params, PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++)
	{
		SourceIndex *ix = palloc0(sizeof(SourceIndex));

		ix->name = pstrdup(PQgetvalue(res, i, 0));
		ix->def = pstrdup(PQgetvalue(res, i, 1));
		ix->isprimary = PQgetvalue(res, i, 2)[0] == 't';
		ix->constraint_owned = PQgetvalue(res, i, 3)[0] == 't';
		ix->columns_text = pstrdup(PQgetvalue(res, i, 4));
		ix->columns = parse_text_array(ix->columns_text);
		indexes = lappend(indexes, ix);
	}
	PQclear(res);
	return indexes;
}

/*
 * Read a source table's definition and check that it can be replicated
 * without making any statement on the source fail.  Without plan, what
 * only the copy's plan needs (the partition key's bounds, a scan of the
 * table) is not asked.
 */
SourceTable *
source_describe_table(PGconn *conn, MirrorTable *mt, bool plan)
{
	SourceTable *st = palloc0(sizeof(SourceTable));
	SourceInfo *info = source_info(conn);
	PGresult   *res;
	char		relpersistence;
	bool		can_select;
	const char *name = qname(mt->source_schema, mt->source_table);
	const char *params[2];
	ListCell   *lc;
	int			replicated_columns = 0;

	st->mt = mt;
	params[0] = mt->source_schema;
	params[1] = mt->source_table;
	res = source_query(conn,
					   "SELECT c.oid, c.relkind, c.relpersistence, "
					   "       has_table_privilege(c.oid, 'SELECT'), "
					   "       greatest(c.relpages::bigint, pg_relation_size(c.oid) / current_setting('block_size')::int), "
					   "       CASE WHEN c.reltuples > 0 THEN c.reltuples::bigint "
					   "            ELSE pg_relation_size(c.oid) / 100 END "
					   "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
					   " WHERE n.nspname = $1 AND c.relname = $2",
					   2, params, PGRES_TUPLES_OK);
	if (PQntuples(res) == 0)
	{
		PQclear(res);
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("source table %s does not exist", name),
				 errhint("Check the mapping: an unquoted name is folded to lower case and means schema public "
						 "when unqualified.  Or create the table on the source.")));
	}
	st->relid = (Oid) strtoul(PQgetvalue(res, 0, 0), NULL, 10);
	st->relkind = PQgetvalue(res, 0, 1)[0];
	relpersistence = PQgetvalue(res, 0, 2)[0];
	can_select = PQgetvalue(res, 0, 3)[0] == 't';
	st->relpages = strtoll(PQgetvalue(res, 0, 4), NULL, 10);
	st->reltuples = strtoll(PQgetvalue(res, 0, 5), NULL, 10);
	PQclear(res);

	if (st->relkind != 'r' && st->relkind != 'p')
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("source relation %s is %s, and only tables can be mirrored", name,
						relkind_noun(st->relkind)),
				 st->relkind == 'm' || st->relkind == 'v' ?
				 errhint("Mirror the tables it is built from, and create the %s on the destination.",
						 st->relkind == 'm' ? "materialized view" : "view") : 0));
	}
	if (relpersistence != 'p')
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source table %s is %s", name, relpersistence == 'u' ? "unlogged" : "temporary"),
				 errdetail("Changes to unlogged and temporary tables are not written to the WAL, so logical replication cannot carry them."),
				 errhint("Run ALTER TABLE %s SET LOGGED on the source, or leave the table out of the mirror.", name)));
	}
	if (st->relkind == 'p' && !info->publish_partitioned)
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source table %s is partitioned, and a PostgreSQL %d source cannot publish partitioned tables",
						name, info->version / 10000),
				 errdetail("Publishing a partitioned table needs PostgreSQL 13 or later on the source."),
				 errhint("Map each partition as a table of its own, or upgrade the source.")));
	}
	if (!can_select)
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for source table %s", name),
				 errhint("Grant SELECT on the table to the peer's role on the source.")));
	}
	check_replica_identities(conn, st, name);

	st->columns = source_table_columns(conn, name);
	{
		int			n = list_length(st->columns);
		char	  **pk = palloc0(sizeof(char *) * (n + 1));

		foreach(lc, st->columns)
		{
			SourceColumn *col = lfirst(lc);
			ListCell   *lc2;

			foreach(lc2, mt->exclude_columns)
				if (strcmp((char *) lfirst(lc2), col->name) == 0)
					col->excluded = true;
			if (col->key_position > 0 && col->key_position <= n)
				pk[col->key_position - 1] = col->name;
		}
		for (int i = 0; i < n && pk[i]; i++)
			st->pk_columns = lappend(st->pk_columns, pk[i]);
	}

	/* every excluded column and the partition key must exist */
	foreach(lc, mt->exclude_columns)
	{
		char	   *ex = lfirst(lc);
		bool		found = false;
		ListCell   *lc2;

		foreach(lc2, st->columns)
			if (strcmp(((SourceColumn *) lfirst(lc2))->name, ex) == 0)
				found = true;
		if (!found)
		{
			bunny_mark_permanent();
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("excluded column \"%s\" does not exist in source table %s", ex, name)));
		}
		foreach(lc2, st->pk_columns)
			if (strcmp((char *) lfirst(lc2), ex) == 0)
			{
				bunny_mark_permanent();
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("column \"%s\" of source table %s is part of the primary key and cannot be excluded",
								ex, name)));
			}
	}
	if (mt->partition_key)
	{
		bool		found = false;

		foreach(lc, st->columns)
			if (strcmp(((SourceColumn *) lfirst(lc))->name, mt->partition_key) == 0)
			{
				SourceColumn *col = lfirst(lc);

				found = true;
				/* integer keys split into ranges; others fall back to blocks */
				if (plan && (col->typid == INT2OID || col->typid == INT4OID || col->typid == INT8OID))
				{
					/* a column and a table are identifiers: no parameters */
					res = source_query(conn,
									   psprintf("SELECT min(%s)::int8, max(%s)::int8 FROM %s",
												quote_identifier(col->name),
												quote_identifier(col->name), name),
									   0, NULL, PGRES_TUPLES_OK);
					if (!PQgetisnull(res, 0, 0))
					{
						st->key_ranges = true;
						st->key_min = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
						st->key_max = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
					}
					PQclear(res);
				}
			}
		if (!found)
		{
			bunny_mark_permanent();
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("partition key \"%s\" does not exist in source table %s",
							mt->partition_key, name)));
		}
	}
	foreach(lc, st->columns)
	{
		SourceColumn *col = lfirst(lc);

		if (!col->excluded && !col->generated)
			replicated_columns++;
	}
	if (replicated_columns == 0)
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source table %s has no columns to replicate", name),
				 errdetail("Its columns are all generated or excluded, or it has none; such rows cannot be written "
						   "or told apart on the destination."),
				 errhint("Leave the table out of the mirror.")));
	}
	describe_table_objects(conn, st);
	return st;
}

/*
 * Describe every mapped table of m (source_describe_table).  A partition
 * mapped next to a partitioned table it belongs to is refused: its changes
 * are published as the partitioned table's, so its own mapping would
 * never see any.
 */
List *
source_describe_tables(PGconn *conn, Mirror *m, bool plan)
{
	List	   *tables = NIL;
	List	   *relids = NIL;
	ListCell   *lc;

	foreach(lc, m->tables)
	{
		MirrorTable *mt = lfirst(lc);
		SourceTable *st;
		BunnyErrorContext errctx;

		bunny_errcontext_push(&errctx, NULL, qname(mt->source_schema, mt->source_table),
							  InvalidXLogRecPtr);
		st = source_describe_table(conn, mt, plan);
		tables = lappend(tables, st);
		relids = lappend(relids, oid_text(st->relid));
		bunny_errcontext_pop(&errctx);
	}

	if (list_length(tables) > 1)
	{
		PGresult   *res;
		const char *params[1];

		params[0] = text_array_literal(relids);
		res = source_query(conn,
						   "SELECT p.oid::regclass::text, a.oid::regclass::text "
						   "  FROM pg_class p, LATERAL pg_partition_ancestors(p.oid) anc(relid) "
						   "  JOIN pg_class a ON a.oid = anc.relid "
						   " WHERE p.oid = ANY ($1::oid[]) AND a.oid = ANY ($1::oid[]) AND a.oid <> p.oid "
						   " LIMIT 1",
						   1, params, PGRES_TUPLES_OK);
		if (PQntuples(res) > 0)
		{
			char	   *part = pstrdup(PQgetvalue(res, 0, 0));
			char	   *parent = pstrdup(PQgetvalue(res, 0, 1));

			PQclear(res);
			bunny_mark_permanent();
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("source table %s is a partition of %s, which the mirror also maps", part, parent),
					 errdetail("Changes of a partition are published as changes of the partitioned table, "
							   "so the partition's own mapping would never receive any."),
					 errhint("Map either the partitioned table or its partitions, not both.")));
		}
		PQclear(res);
	}
	return tables;
}

/* a type of the source by OID, or NULL when it is gone */
SourceType *
source_describe_type(PGconn *conn, Oid typid)
{
	PGresult   *res;
	SourceType *t;
	const char *params[1] = {oid_text(typid)};

	res = source_query(conn,
					   "SELECT t.typtype, n.nspname, t.typname, t.typelem, t.typbasetype, "
					   "       format_type(t.typbasetype, t.typtypmod), t.typnotnull, "
					   "       t.typdefault, t.typrelid, t.typcategory, "
					   "       (SELECT e.extname FROM pg_depend d "
					   "          JOIN pg_extension e ON e.oid = d.refobjid "
					   "         WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid "
					   "           AND d.deptype = 'e') "
					   "  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
					   " WHERE t.oid = $1::oid",
					   1, params, PGRES_TUPLES_OK);
	if (PQntuples(res) == 0)
	{
		PQclear(res);
		return NULL;
	}
	t = palloc0(sizeof(SourceType));
	t->typid = typid;
	t->typtype = PQgetvalue(res, 0, 0)[0];
	t->nspname = pstrdup(PQgetvalue(res, 0, 1));
	t->typname = pstrdup(PQgetvalue(res, 0, 2));
	t->elem = (Oid) strtoul(PQgetvalue(res, 0, 3), NULL, 10);
	t->basetype = (Oid) strtoul(PQgetvalue(res, 0, 4), NULL, 10);
	t->basetype_sql = pstrdup(PQgetvalue(res, 0, 5));
	t->notnull = PQgetvalue(res, 0, 6)[0] == 't';
	t->typdefault = PQgetisnull(res, 0, 7) ? NULL : pstrdup(PQgetvalue(res, 0, 7));
	t->typrelid = (Oid) strtoul(PQgetvalue(res, 0, 8), NULL, 10);
	t->typcategory = PQgetvalue(res, 0, 9)[0];
	t->extname = PQgetisnull(res, 0, 10) ? NULL : pstrdup(PQgetvalue(res, 0, 10));
	PQclear(res);
	return t;
}

/* the labels of an enum type, in their sort order (char *) */
List *
source_enum_labels(PGconn *conn, const char *nspname, const char *typname)
{
	PGresult   *res;
	List	   *labels = NIL;
	const char *params[2] = {nspname, typname};

	res = source_query(conn,
					   "SELECT e.enumlabel FROM pg_catalog.pg_enum e "
					   "  JOIN pg_catalog.pg_type t ON t.oid = e.enumtypid "
					   "  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
					   " WHERE n.nspname = $1 AND t.typname = $2 "
					   " ORDER BY e.enumsortorder",
					   2, params, PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++)
		labels = lappend(labels, pstrdup(PQgetvalue(res, i, 0)));
	PQclear(res);
	return labels;
}

/* the CHECK constraints of a domain, by name (SourceNamedDef *) */
List *
source_domain_checks(PGconn *conn, Oid typid)
{
	PGresult   *res;
	List	   *checks = NIL;
	const char *params[1] = {oid_text(typid)};

	res = source_query(conn,
					   "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
					   " WHERE contypid = $1::oid AND contype = 'c' ORDER BY conname",
					   1, params, PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++)
	{
		SourceNamedDef *d = palloc0(sizeof(SourceNamedDef));

		d->name = pstrdup(PQgetvalue(res, i, 0));
		d->def = pstrdup(PQgetvalue(res, i, 1));
		checks = lappend(checks, d);
	}
	PQclear(res);
	return checks;
}

/* the attributes of a composite type's relation (SourceNamedDef *) */
List *
source_type_attributes(PGconn *conn, Oid typrelid)
{
	PGresult   *res;
	List	   *atts = NIL;
	const char *params[1] = {oid_text(typrelid)};

	res = source_query(conn,
					   "SELECT attname, format_type(atttypid, atttypmod), atttypid "
					   "  FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0 "
					   "   AND NOT attisdropped ORDER BY attnum",
					   1, params, PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++)
	{
		SourceNamedDef *d = palloc0(sizeof(SourceNamedDef));

		d->name = pstrdup(PQgetvalue(res, i, 0));
		d->def = pstrdup(PQgetvalue(res, i, 1));
		d->typid = (Oid) strtoul(PQgetvalue(res, i, 2), NULL, 10);
		atts = lappend(atts, d);
	}
	PQclear(res);
	return atts;
}

/*
 * The tables of the source a mirror could map (ordinary and partitioned,
 * not partitions, outside the system schemas), by schema and name, for
 * bunny.peer_tables.  Their row estimate is the planner's
 * (estimate_rel_size): the analyzed density times the table's pages now,
 * or, for a table never analyzed, its pages times the rows a page holds
 * at the columns' typical widths (32 bytes for a variable-length one); a
 * partitioned table sums its partitions (pg_partition_tree lists nothing
 * for a table that is not partitioned, hence the table itself as well).
 */
List *
source_list_tables(PGconn *conn)
{
	PGresult   *res;
	List	   *result = NIL;

	res = source_query(conn,
					   "SELECT n.nspname, c.relname, "
					   "       EXISTS (SELECT 1 FROM pg_catalog.pg_index i "
					   "                WHERE i.indrelid = c.oid AND i.indisprimary), "
					   "       CASE c.relreplident WHEN 'd' THEN 'default' WHEN 'f' THEN 'full' "
					   "            WHEN 'i' THEN 'index' ELSE 'nothing' END, "
					   "       (SELECT coalesce(sum(CASE WHEN l.relpages > 0 AND l.reltuples >= 0 "
					   "                                 THEN l.reltuples / l.relpages * s.pages "
					   "                                 ELSE s.pages * s.per_page END), 0)::bigint "
					   "          FROM pg_catalog.pg_class l, "
					   "               LATERAL (SELECT pg_catalog.pg_relation_size(l.oid) / b.size AS pages, "
					   "                               floor((b.size - 24) / (28 + "
					   "                                 (SELECT coalesce(sum(CASE WHEN a.attlen > 0 "
					   "                                                           THEN a.attlen ELSE 32 END), 0) "
					   "                                    FROM pg_catalog.pg_attribute a "
					   "                                   WHERE a.attrelid = l.oid AND a.attnum > 0 "
					   "                                     AND NOT a.attisdropped))) AS per_page "
					   "                          FROM (SELECT pg_catalog.current_setting('block_size')::int "
					   "                                       AS size) b) s "
					   "         WHERE l.oid IN (SELECT c.oid UNION ALL "
					   "                         SELECT t.relid FROM pg_catalog.pg_partition_tree(c.oid) t "
					   "                          WHERE t.isleaf)) "
					   "  FROM pg_catalog.pg_class c "
					   "  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
					   " WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
					   "   AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
					   "   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' "
					   " ORDER BY 1, 2",
					   0, NULL, PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++)
	{
		SourceTableSummary *t = palloc(sizeof(SourceTableSummary));

		t->schema = pstrdup(PQgetvalue(res, i, 0));
		t->table = pstrdup(PQgetvalue(res, i, 1));
		t->has_primary_key = PQgetvalue(res, i, 2)[0] == 't';
		t->replica_identity = pstrdup(PQgetvalue(res, i, 3));
		t->estimated_rows = strtoll(PQgetvalue(res, i, 4), NULL, 10);
		result = lappend(result, t);
	}
	PQclear(res);
	return result;
}

/*
 * The default expression of a column of qualified_table (quoted, as
 * quote_qualified_identifier makes it), or NULL.  A column added with a
 * default fills the existing rows on the source without any WAL record
 * per row, so the destination column needs the same default to agree.
 * A default that calls nextval() is not returned: it names a sequence the
 * destination may not have.
 */
char *
source_column_default(PGconn *conn, const char *qualified_table, const char *attname)
{
	PGresult   *res;
	char	   *result = NULL;
	const char *params[2] = {qualified_table, attname};

	res = source_query(conn,
					   "SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) "
					   "  FROM pg_catalog.pg_attrdef d "
					   "  JOIN pg_catalog.pg_attribute a "
					   "    ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
					   " WHERE d.adrelid = $1::pg_catalog.regclass AND a.attname = $2 "
					   "   AND a.attgenerated = ''",
					   2, params, PGRES_TUPLES_OK);
	if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0) &&
		strstr(PQgetvalue(res, 0, 0), "nextval(") == NULL)
		result = pstrdup(PQgetvalue(res, 0, 0));
	PQclear(res);
	return result;
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
						 qname(st->mt->source_schema, st->mt->source_table));

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

/*
 * The replicated columns' types of the given tables (parallel lists of
 * schema and table names), generated columns left out, as
 * SourceColumnType *: what deciding on binary transfer needs.
 */
List *
source_column_types(PGconn *conn, List *schemas, List *tables)
{
	PGresult   *res;
	List	   *result = NIL;
	const char *params[2];

	params[0] = text_array_literal(schemas);
	params[1] = text_array_literal(tables);
	res = source_query(conn,
					   "SELECT n.nspname, c.relname, a.attname, a.atttypid "
					   "  FROM pg_catalog.pg_attribute a "
					   "  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
					   "  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
					   " WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' "
					   "   AND (n.nspname::text, c.relname::text) IN "
					   "       (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::text[]), "
					   "                                 pg_catalog.unnest($2::text[])))",
					   2, params, PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++)
	{
		SourceColumnType *ct = palloc(sizeof(SourceColumnType));

		ct->schema = pstrdup(PQgetvalue(res, i, 0));
		ct->table = pstrdup(PQgetvalue(res, i, 1));
		ct->column = pstrdup(PQgetvalue(res, i, 2));
		ct->typid = (Oid) strtoul(PQgetvalue(res, i, 3), NULL, 10);
		result = lappend(result, ct);
	}
	PQclear(res);
	return result;
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
