/*-------------------------------------------------------------------------
 *
 * setup.c
 *		SETUP phase of a mirror: check the source, create the destination
 *		schemas, types and tables, the publication and the slot, then hand
 *		over to the initial copy (snapshot.c) or straight to CDC.
 *
 * Setup is idempotent, so that a crash anywhere in it is cured by running
 * it again: destination objects are created only when missing, the
 * publication is reused when its comment names this mirror's incarnation,
 * and the slot is dropped and created again when bunny.mirror says we asked
 * for it (nothing has been applied from it yet).  A slot or publication of
 * the same name that is not ours is never touched: that is an error.
 *
 * The phase switch to CDC commits together with the replication origin's
 * starting position (the slot's consistent point), so CDC starts exactly
 * where the copy's snapshot ends.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "replication/origin.h"
#include "utils/builtins.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* a column of a source table */
typedef struct SourceColumn
{
	char	   *name;
	char	   *type_sql;		/* format_type(), schema-qualified */
	bool		notnull;
	Oid			typid;
	char	   *generated;		/* expression of a generated column, or NULL */
	bool		excluded;
} SourceColumn;

/* a source table as setup sees it */
typedef struct SourceTable
{
	MirrorTable *mt;
	Oid			relid;
	char		relkind;
	List	   *columns;		/* of SourceColumn * */
	List	   *pk_columns;		/* of char *, in key order */
} SourceTable;

static List *created_types = NIL;	/* type OIDs handled in this run */

/* SPI helpers for the destination side */
static void
dest_exec(const char *sql)
{
	int			rc;

	SPI_connect();
	rc = SPI_execute(sql, false, 0);
	SPI_finish();
	if (rc < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not run \"%s\" on the destination", sql)));
}

static bool
dest_exists(const char *sql, const char *a, const char *b)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	bool		found;

	values[0] = CStringGetTextDatum(a);
	values[1] = CStringGetTextDatum(b ? b : "");
	SPI_connect();
	SPI_execute_with_args(sql, 2, types, values, NULL, true, 1);
	found = SPI_processed > 0;
	SPI_finish();
	return found;
}

static const char *
qname(const char *schema, const char *name)
{
	return quote_qualified_identifier(schema, name);
}

/* mark the next error as one that retrying does not cure */
#define PERMANENT() (bunny_error_is_permanent = true)

/* check wal_level and the role's rights on the source */
static int
check_source(PGconn *conn)
{
	PGresult   *res;
	char	   *wal_level;
	int			version;
	bool		can_replicate;

	stream_exec_command(conn, "SELECT pg_catalog.set_config('search_path', 'pg_catalog', false)");
	res = stream_exec_ok(conn,
						 "SELECT current_setting('wal_level'), "
						 "       current_setting('server_version_num')::int, "
						 "       (SELECT rolsuper OR rolreplication FROM pg_roles "
						 "         WHERE rolname = current_user)",
						 PGRES_TUPLES_OK);
	wal_level = pstrdup(PQgetvalue(res, 0, 0));
	version = atoi(PQgetvalue(res, 0, 1));
	can_replicate = strcmp(PQgetvalue(res, 0, 2), "t") == 0;
	PQclear(res);

	if (strcmp(wal_level, "logical") != 0)
	{
		PERMANENT();
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("source wal_level is \"%s\", it must be \"logical\"", wal_level),
				 errhint("Set wal_level = logical on the source and restart it, then call bunny.retry_mirror().")));
	}
	if (!can_replicate)
	{
		PERMANENT();
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the source role has neither the REPLICATION nor the SUPERUSER attribute"),
				 errhint("Run ALTER ROLE ... REPLICATION on the source.")));
	}
	return version;
}

/* read a source table's definition and check that it can be replicated */
static SourceTable *
describe_table(PGconn *conn, MirrorTable *mt)
{
	SourceTable *st = palloc0(sizeof(SourceTable));
	PGresult   *res;
	char	   *sql;
	char		replident;
	bool		can_select,
				has_pk,
				has_ri_index;
	const char *name = qname(mt->source_schema, mt->source_table);
	ListCell   *lc;

	st->mt = mt;
	sql = psprintf("SELECT c.oid, c.relkind, c.relreplident, "
				   "       has_table_privilege(c.oid, 'SELECT'), "
				   "       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), "
				   "       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) "
				   "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
				   " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
				   quote_literal_cstr(mt->source_schema), quote_literal_cstr(mt->source_table));
	res = stream_exec_ok(conn, sql, PGRES_TUPLES_OK);
	if (PQntuples(res) == 0)
	{
		PQclear(res);
		PERMANENT();
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("source table %s does not exist", name)));
	}
	st->relid = (Oid) strtoul(PQgetvalue(res, 0, 0), NULL, 10);
	st->relkind = PQgetvalue(res, 0, 1)[0];
	replident = PQgetvalue(res, 0, 2)[0];
	can_select = PQgetvalue(res, 0, 3)[0] == 't';
	has_pk = PQgetvalue(res, 0, 4)[0] == 't';
	has_ri_index = PQgetvalue(res, 0, 5)[0] == 't';
	PQclear(res);

	if (!can_select)
	{
		PERMANENT();
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for source table %s", name),
				 errhint("Grant SELECT on the table to the peer's role on the source.")));
	}
	if (!(replident == 'f' || (replident == 'i' && has_ri_index) ||
		  (replident == 'd' && has_pk)))
	{
		PERMANENT();
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("source table %s has no primary key and no usable replica identity", name),
				 errdetail("Updates and deletes are replicated, and they must identify the row."),
				 errhint("Add a primary key, or run ALTER TABLE %s REPLICA IDENTITY FULL on the source.", name)));
	}

	sql = psprintf("SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atttypid, "
				   "       CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END, "
				   "       coalesce((SELECT k.ord FROM pg_index i, "
				   "                        unnest(i.indkey) WITH ORDINALITY k(attnum, ord) "
				   "                  WHERE i.indrelid = a.attrelid AND i.indisprimary "
				   "                    AND k.attnum = a.attnum), 0) "
				   "  FROM pg_attribute a "
				   "  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
				   " WHERE a.attrelid = %u AND a.attnum > 0 AND NOT a.attisdropped "
				   " ORDER BY a.attnum", st->relid);
	res = stream_exec_ok(conn, sql, PGRES_TUPLES_OK);
	{
		int			n = PQntuples(res);
		char	  **pk = palloc0(sizeof(char *) * (n + 1));

		for (int i = 0; i < n; i++)
		{
			SourceColumn *col = palloc0(sizeof(SourceColumn));
			int			ord = atoi(PQgetvalue(res, i, 5));

			col->name = pstrdup(PQgetvalue(res, i, 0));
			col->type_sql = pstrdup(PQgetvalue(res, i, 1));
			col->notnull = PQgetvalue(res, i, 2)[0] == 't';
			col->typid = (Oid) strtoul(PQgetvalue(res, i, 3), NULL, 10);
			col->generated = PQgetisnull(res, i, 4) ? NULL : pstrdup(PQgetvalue(res, i, 4));
			foreach(lc, mt->exclude_columns)
				if (strcmp((char *) lfirst(lc), col->name) == 0)
					col->excluded = true;
			if (ord > 0 && ord <= n)
				pk[ord - 1] = col->name;
			st->columns = lappend(st->columns, col);
		}
		for (int i = 0; i < n && pk[i]; i++)
			st->pk_columns = lappend(st->pk_columns, pk[i]);
	}
	PQclear(res);

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
			PERMANENT();
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("excluded column \"%s\" does not exist in source table %s", ex, name)));
		}
		foreach(lc2, st->pk_columns)
			if (strcmp((char *) lfirst(lc2), ex) == 0)
			{
				PERMANENT();
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
				found = true;
		if (!found)
		{
			PERMANENT();
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("partition key \"%s\" does not exist in source table %s",
							mt->partition_key, name)));
		}
	}
	return st;
}

/*
 * Create a user-defined type on the destination unless a type of that name
 * exists, after the types it depends on.  Enums, domains and composites are
 * copied; other kinds must already exist (for example from an extension).
 */
static void
ensure_type(PGconn *conn, Oid typid, const char *mirror_name)
{
	PGresult   *res;
	char		typtype;
	char	   *nsp,
			   *typname,
			   *extname;
	Oid			elem,
				basetype,
				typrelid;
	char	   *basetype_sql,
			   *typdefault;
	bool		typnotnull;
	StringInfoData ddl;

	if (typid < FirstNormalObjectId || list_member_oid(created_types, typid))
		return;
	created_types = lappend_oid(created_types, typid);

	res = stream_exec_ok(conn,
						 psprintf("SELECT t.typtype, n.nspname, t.typname, t.typelem, t.typbasetype, "
								  "       format_type(t.typbasetype, t.typtypmod), t.typnotnull, "
								  "       t.typdefault, t.typrelid, t.typcategory, "
								  "       (SELECT e.extname FROM pg_depend d "
								  "          JOIN pg_extension e ON e.oid = d.refobjid "
								  "         WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid "
								  "           AND d.deptype = 'e') "
								  "  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
								  " WHERE t.oid = %u", typid),
						 PGRES_TUPLES_OK);
	if (PQntuples(res) == 0)
	{
		PQclear(res);
		return;					/* dropped meanwhile; table DDL will tell */
	}
	typtype = PQgetvalue(res, 0, 0)[0];
	nsp = pstrdup(PQgetvalue(res, 0, 1));
	typname = pstrdup(PQgetvalue(res, 0, 2));
	elem = (Oid) strtoul(PQgetvalue(res, 0, 3), NULL, 10);
	basetype = (Oid) strtoul(PQgetvalue(res, 0, 4), NULL, 10);
	basetype_sql = pstrdup(PQgetvalue(res, 0, 5));
	typnotnull = PQgetvalue(res, 0, 6)[0] == 't';
	typdefault = PQgetisnull(res, 0, 7) ? NULL : pstrdup(PQgetvalue(res, 0, 7));
	typrelid = (Oid) strtoul(PQgetvalue(res, 0, 8), NULL, 10);
	extname = PQgetisnull(res, 0, 10) ? NULL : pstrdup(PQgetvalue(res, 0, 10));
	if (PQgetvalue(res, 0, 9)[0] == 'A' && elem != InvalidOid)
	{
		/* an array: its element type brings it along */
		PQclear(res);
		ensure_type(conn, elem, mirror_name);
		return;
	}
	PQclear(res);

	if (dest_exists("SELECT 1 FROM pg_catalog.pg_type t "
					"  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
					" WHERE n.nspname = $1 AND t.typname = $2", nsp, typname))
		return;

	if (extname != NULL || (typtype != 'e' && typtype != 'd' && typtype != 'c'))
	{
		PERMANENT();
		if (extname)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("type %s does not exist on the destination", qname(nsp, typname)),
					 errdetail("The type belongs to extension \"%s\" on the source.", extname),
					 errhint("Run CREATE EXTENSION %s in the destination database.",
							 quote_identifier(extname))));
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("type %s does not exist on the destination and cannot be created automatically",
						qname(nsp, typname)),
				 errhint("Create the type on the destination, then call bunny.retry_mirror().")));
	}

	initStringInfo(&ddl);
	appendStringInfo(&ddl, "CREATE SCHEMA IF NOT EXISTS %s", quote_identifier(nsp));
	dest_exec(ddl.data);
	resetStringInfo(&ddl);

	if (typtype == 'e')
	{
		res = stream_exec_ok(conn,
							 psprintf("SELECT enumlabel FROM pg_enum WHERE enumtypid = %u "
									  "ORDER BY enumsortorder", typid),
							 PGRES_TUPLES_OK);
		appendStringInfo(&ddl, "CREATE TYPE %s AS ENUM (", qname(nsp, typname));
		for (int i = 0; i < PQntuples(res); i++)
			appendStringInfo(&ddl, "%s%s", i ? ", " : "",
							 quote_literal_cstr(PQgetvalue(res, i, 0)));
		appendStringInfoChar(&ddl, ')');
		PQclear(res);
	}
	else if (typtype == 'd')
	{
		ensure_type(conn, basetype, mirror_name);
		appendStringInfo(&ddl, "CREATE DOMAIN %s AS %s", qname(nsp, typname), basetype_sql);
		if (typdefault)
			appendStringInfo(&ddl, " DEFAULT %s", typdefault);
		if (typnotnull)
			appendStringInfoString(&ddl, " NOT NULL");
		res = stream_exec_ok(conn,
							 psprintf("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
									  "WHERE contypid = %u AND contype = 'c' ORDER BY conname", typid),
							 PGRES_TUPLES_OK);
		for (int i = 0; i < PQntuples(res); i++)
			appendStringInfo(&ddl, " CONSTRAINT %s %s",
							 quote_identifier(PQgetvalue(res, i, 0)), PQgetvalue(res, i, 1));
		PQclear(res);
	}
	else
	{
		int			n;
		List	   *deps = NIL;
		ListCell   *lc;

		res = stream_exec_ok(conn,
							 psprintf("SELECT attname, format_type(atttypid, atttypmod), atttypid "
									  "  FROM pg_attribute WHERE attrelid = %u AND attnum > 0 "
									  "   AND NOT attisdropped ORDER BY attnum", typrelid),
							 PGRES_TUPLES_OK);
		n = PQntuples(res);
		appendStringInfo(&ddl, "CREATE TYPE %s AS (", qname(nsp, typname));
		for (int i = 0; i < n; i++)
		{
			appendStringInfo(&ddl, "%s%s %s", i ? ", " : "",
							 quote_identifier(PQgetvalue(res, i, 0)), PQgetvalue(res, i, 1));
			deps = lappend_oid(deps, (Oid) strtoul(PQgetvalue(res, i, 2), NULL, 10));
		}
		appendStringInfoChar(&ddl, ')');
		PQclear(res);
		foreach(lc, deps)
			ensure_type(conn, lfirst_oid(lc), mirror_name);
	}
	dest_exec(ddl.data);
	bunny_log(mirror_name, "INFO", psprintf("created type %s on the destination", qname(nsp, typname)),
			  NULL);
}

/* create the destination table unless it exists; true if created */
static bool
ensure_table(SourceTable *st, const char *mirror_name)
{
	MirrorTable *mt = st->mt;
	StringInfoData ddl;
	ListCell   *lc;
	bool		first = true;
	bool		pk_complete = st->pk_columns != NIL;

	if (dest_exists("SELECT 1 FROM pg_catalog.pg_class c "
					"  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
					" WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
					mt->dest_schema, mt->dest_table))
		return false;

	initStringInfo(&ddl);
	appendStringInfo(&ddl, "CREATE SCHEMA IF NOT EXISTS %s", quote_identifier(mt->dest_schema));
	dest_exec(ddl.data);
	resetStringInfo(&ddl);

	appendStringInfo(&ddl, "CREATE TABLE %s (", qname(mt->dest_schema, mt->dest_table));
	foreach(lc, st->columns)
	{
		SourceColumn *col = lfirst(lc);

		if (col->excluded)
			continue;
		appendStringInfo(&ddl, "%s%s %s", first ? "" : ", ",
						 quote_identifier(col->name), col->type_sql);
		if (col->generated)
			appendStringInfo(&ddl, " GENERATED ALWAYS AS (%s) STORED", col->generated);
		if (col->notnull)
			appendStringInfoString(&ddl, " NOT NULL");
		first = false;
	}
	if (pk_complete)
	{
		first = true;
		appendStringInfoString(&ddl, ", PRIMARY KEY (");
		foreach(lc, st->pk_columns)
		{
			appendStringInfo(&ddl, "%s%s", first ? "" : ", ", quote_identifier(lfirst(lc)));
			first = false;
		}
		appendStringInfoChar(&ddl, ')');
	}
	appendStringInfoChar(&ddl, ')');
	dest_exec(ddl.data);
	bunny_log(mirror_name, "INFO",
			  psprintf("created destination table %s", qname(mt->dest_schema, mt->dest_table)),
			  NULL);
	return true;
}

/* create the publication, or check and refresh ours */
static void
ensure_publication(PGconn *conn, Mirror *m, List *tables, int source_version)
{
	StringInfoData tl;
	PGresult   *res;
	char	   *comment = psprintf("bunnydb mirror %s incarnation %s", m->name, m->incarnation);
	ListCell   *lc;
	bool		exists;
	bool		ours = false;

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
		if (has_excluded)
		{
			bool		first = true;

			if (source_version < 150000)
			{
				PERMANENT();
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("exclude_columns needs a source running PostgreSQL 15 or later")));
			}
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

	res = stream_exec_ok(conn,
						 psprintf("SELECT obj_description(p.oid, 'pg_publication') "
								  "  FROM pg_publication p WHERE p.pubname = %s",
								  quote_literal_cstr(m->publication_name)),
						 PGRES_TUPLES_OK);
	exists = PQntuples(res) > 0;
	if (exists)
		ours = !PQgetisnull(res, 0, 0) && strcmp(PQgetvalue(res, 0, 0), comment) == 0;
	PQclear(res);

	if (exists && !ours)
	{
		PERMANENT();
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
		stream_exec_command(conn, psprintf("CREATE PUBLICATION %s FOR TABLE %s "
										   "WITH (publish_via_partition_root = true)",
										   quote_identifier(m->publication_name), tl.data));
		stream_exec_command(conn, psprintf("COMMENT ON PUBLICATION %s IS %s",
										   quote_identifier(m->publication_name),
										   quote_literal_cstr(comment)));
		bunny_log(m->name, "INFO", psprintf("created publication %s on the source",
											m->publication_name), NULL);
	}
}

/*
 * Create the slot.  A slot of that name that we asked for earlier (a crash
 * during setup) is dropped first: nothing was applied from it.  Returns the
 * consistent point; *snapshot gets the exported snapshot's name if asked.
 */
static XLogRecPtr
create_slot(PGconn *conn, Mirror *m, bool export_snapshot, char **snapshot)
{
	PGresult   *res;
	XLogRecPtr	lsn;
	bool		exists;

	res = stream_exec_ok(conn,
						 psprintf("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
								  quote_literal_cstr(m->slot_name)),
						 PGRES_TUPLES_OK);
	exists = PQntuples(res) > 0;
	PQclear(res);

	if (exists && !m->slot_requested)
	{
		PERMANENT();
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("replication slot \"%s\" already exists on the source and does not belong to this mirror",
						m->slot_name),
				 errhint("If it is a leftover, drop it on the source with SELECT pg_drop_replication_slot('%s'), then call bunny.retry_mirror().",
						 m->slot_name)));
	}
	if (exists)
	{
		stream_exec_command(conn,
							psprintf("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
									 " WHERE slot_name = %s AND active_pid IS NOT NULL",
									 quote_literal_cstr(m->slot_name)));
		for (int tries = 0;; tries++)
		{
			PGresult   *r = stream_exec(conn,
										psprintf("SELECT pg_drop_replication_slot(%s)",
												 quote_literal_cstr(m->slot_name)));
			bool		ok = r && PQresultStatus(r) == PGRES_TUPLES_OK;

			if (r)
				PQclear(r);
			if (ok)
				break;
			if (tries > 50)
				(void) stream_exec_ok(conn, psprintf("SELECT pg_drop_replication_slot(%s)",
													 quote_literal_cstr(m->slot_name)),
									  PGRES_TUPLES_OK);
			pg_usleep(100 * 1000L);
			CHECK_FOR_INTERRUPTS();
		}
	}

	/* record the request durably before making it */
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	catalog_set_slot_requested(m->id);
	PopActiveSnapshot();
	CommitTransactionCommand();
	/* the worker commits asynchronously; this one must survive a crash */
	XLogFlush(XactLastCommitEnd);
	m->slot_requested = true;

	res = stream_exec_ok(conn,
						 psprintf("CREATE_REPLICATION_SLOT %s LOGICAL pgoutput %s",
								  quote_identifier(m->slot_name),
								  export_snapshot ? "EXPORT_SNAPSHOT" : "NOEXPORT_SNAPSHOT"),
						 PGRES_TUPLES_OK);
	lsn = DatumGetLSN(DirectFunctionCall1(pg_lsn_in, CStringGetDatum(PQgetvalue(res, 0, 1))));
	if (snapshot)
		*snapshot = PQgetisnull(res, 0, 2) ? NULL : pstrdup(PQgetvalue(res, 0, 2));
	PQclear(res);
	return lsn;
}

/*
 * Run the SETUP phase (and the initial copy when configured) on the given
 * replication connection, and commit the switch to CDC.
 */
void
setup_run(PGconn *conn, Mirror *m)
{
	List	   *tables = NIL;
	ListCell   *lc;
	int			version;
	XLogRecPtr	start_lsn;
	char	   *snapshot = NULL;
	bool		copy = m->do_initial_snapshot;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	catalog_set_status(m->id, "SETUP", "SETUP");
	bunny_log(m->name, "INFO", "setup started", NULL);
	PopActiveSnapshot();
	CommitTransactionCommand();

	pgstat_report_activity(STATE_RUNNING, "bunnydb: setup");
	version = check_source(conn);

	foreach(lc, m->tables)
	{
		MirrorTable *mt = lfirst(lc);

		bunny_ctx_table = qname(mt->source_schema, mt->source_table);
		tables = lappend(tables, describe_table(conn, mt));
	}
	bunny_ctx_table = NULL;

	/* destination: schemas, types, tables */
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	created_types = NIL;
	foreach(lc, tables)
	{
		SourceTable *st = lfirst(lc);
		ListCell   *lc2;

		bunny_ctx_table = qname(st->mt->dest_schema, st->mt->dest_table);
		foreach(lc2, st->columns)
		{
			SourceColumn *col = lfirst(lc2);

			if (!col->excluded)
				ensure_type(conn, col->typid, m->name);
		}
		ensure_table(st, m->name);
	}
	bunny_ctx_table = NULL;
	PopActiveSnapshot();
	CommitTransactionCommand();

	ensure_publication(conn, m, tables, version);

	start_lsn = create_slot(conn, m, copy, &snapshot);
	{
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		bunny_log(m->name, "INFO",
				  psprintf("created replication slot %s on the source at %X/%X",
						   m->slot_name, LSN_FORMAT_ARGS(start_lsn)), NULL);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}

	if (copy)
	{
		List	   *copy_tables = NIL;

		foreach(lc, tables)
		{
			SourceTable *st = lfirst(lc);
			CopyTable  *ct = palloc0(sizeof(CopyTable));
			ListCell   *lc2;

			ct->mt = st->mt;
			ct->relkind = st->relkind;
			foreach(lc2, st->columns)
			{
				SourceColumn *col = lfirst(lc2);
				CopyColumn *cc;

				if (col->excluded || col->generated)
					continue;
				cc = palloc0(sizeof(CopyColumn));
				cc->name = col->name;
				cc->typid = col->typid;
				ct->columns = lappend(ct->columns, cc);
			}
			copy_tables = lappend(copy_tables, ct);
		}
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		catalog_set_status(m->id, "SNAPSHOT", "SNAPSHOT");
		PopActiveSnapshot();
		CommitTransactionCommand();
		snapshot_run(m, snapshot, copy_tables);
	}

	/* switch to CDC; the origin starts at the slot's consistent point */
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	catalog_set_table_status(m->id, "SYNCED");
	catalog_set_status(m->id, "RUNNING", "CDC");
	bunny_log(m->name, "INFO",
			  psprintf("setup complete; streaming changes from %X/%X", LSN_FORMAT_ARGS(start_lsn)),
			  NULL);
	replorigin_session_origin_lsn = start_lsn;
	replorigin_session_origin_timestamp = GetCurrentTimestamp();
	PopActiveSnapshot();
	CommitTransactionCommand();
	replorigin_session_origin_lsn = InvalidXLogRecPtr;
	replorigin_session_origin_timestamp = 0;
}
