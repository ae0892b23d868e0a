/*-------------------------------------------------------------------------
 *
 * sourcedesc.c
 *		What the source's tables and types are: the descriptions setup,
 *		resync, the apply and the SQL API work from (source.h), and the
 *		checks that refuse, before anything is created, what PostgreSQL
 *		could not publish without making the source's own writes fail.
 *
 * The other half of the source module, source.c, has the connection, the
 * query helper every question here goes through, the publication, the
 * slot and positions.  The same rules hold: every question is asked once,
 * in one function, with parameters; identifiers are quoted where built.
 *
 * Functions:
 *		source_describe_table		one mapped table (SourceTable), checked
 *		source_describe_tables		all of a mirror's, checked together
 *		source_table_columns		a table's columns (SourceColumn)
 *		source_table_indexes		a table's indexes (SourceIndex)
 *		source_list_tables			the tables a mirror could map
 *		source_column_types			replicated columns' types (binary
 *									transfer)
 *
 *-------------------------------------------------------------------------
 */
#include "source.h"

#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"

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
 * The rows of relation c (summed over its leaf partitions), estimated as
 * the planner does: the density of its last ANALYZE times its size now,
 * or, never analyzed, as many rows of its column widths as fit in its
 * pages.  bunny.peer_tables shows it, and the copy plan and the progress
 * views (bunny.copy_progress) estimate totals with it.
 */
#define ESTIMATED_ROWS_SQL \
	"(SELECT coalesce(sum(CASE WHEN l.relpages > 0 AND l.reltuples >= 0 " \
	"                          THEN l.reltuples / l.relpages * s.pages " \
	"                          ELSE s.pages * s.per_page END), 0)::bigint " \
	"   FROM pg_catalog.pg_class l, " \
	"        LATERAL (SELECT pg_catalog.pg_relation_size(l.oid) / b.size AS pages, " \
	"                        floor((b.size - 24) / (28 + " \
	"                          (SELECT coalesce(sum(CASE WHEN a.attlen > 0 " \
	"                                                    THEN a.attlen ELSE 32 END), 0) " \
	"                             FROM pg_catalog.pg_attribute a " \
	"                            WHERE a.attrelid = l.oid AND a.attnum > 0 " \
	"                              AND NOT a.attisdropped))) AS per_page " \
	"                   FROM (SELECT pg_catalog.current_setting('block_size')::int " \
	"                                AS size) b) s " \
	"  WHERE l.oid = ANY (ARRAY(SELECT c.oid UNION ALL " \
	"                          SELECT t.relid FROM pg_catalog.pg_partition_tree(c.oid) t " \
	"                           WHERE t.isleaf AND t.relid <> c.oid)))"

/*
 * Describing a mirror's tables
 *
 * A mirror may map thousands of tables.  Asked one table at a time, each
 * description took five round trips (relation, replica identities,
 * columns, constraints, indexes), and create_mirror and setup each
 * describe every table: 10 000 round trips at 1 000 tables, whose cost on
 * a loaded machine is the scheduling of each, not the query.  So every
 * question below takes all the tables at once, as one array, and returns
 * rows keyed by the table's OID, which are handed to the table's
 * SourceTable through a hash table; the checks then run in C, table by
 * table, with the messages they always had.  Only the copy plan's bounds
 * of an integer partition_key are still one query per table that has one.
 */

/* a table being described, found by its OID */
typedef struct DescribeEntry
{
	Oid			relid;			/* hash key */
	SourceTable *st;
} DescribeEntry;

static HTAB *
describe_hash(List *tables)
{
	HASHCTL		ctl;
	HTAB	   *hash;
	ListCell   *lc;

	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(DescribeEntry);
	ctl.hcxt = CurrentMemoryContext;
	hash = hash_create("bunnydb source tables", Max(list_length(tables), 16), &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	foreach(lc, tables)
	{
		SourceTable *st = lfirst(lc);
		DescribeEntry *e = hash_search(hash, &st->relid, HASH_ENTER, NULL);

		e->st = st;
	}
	return hash;
}

/* the table a row of a batch query is about (its first column, an OID) */
static SourceTable *
describe_row_table(HTAB *hash, PGresult *res, int row)
{
	Oid			relid = (Oid) strtoul(PQgetvalue(res, row, 0), NULL, 10);
	DescribeEntry *e = hash_search(hash, &relid, HASH_FIND, NULL);

	if (e == NULL)
		elog(ERROR, "source returned a row for relation %u, which was not asked about", relid);
	return e->st;
}

/* the OIDs of tables, as one parameter */
static char *
describe_oids(List *tables)
{
	List	   *oids = NIL;
	ListCell   *lc;

	foreach(lc, tables)
		oids = lappend(oids, source_oid_text(((SourceTable *) lfirst(lc))->relid));
	return source_text_array(oids);
}

/*
 * Find the mapped relations and refuse what cannot be published: missing,
 * not a table, unlogged or temporary, partitioned on a source before 13,
 * or not readable by the peer's role.  Returns their SourceTables in the
 * order of mts.
 */
static List *
describe_relations(PGconn *conn, List *mts)
{
	SourceInfo *info = source_info(conn);
	List	   *schemas = NIL;
	List	   *names = NIL;
	List	   *tables = NIL;
	ListCell   *lc;
	PGresult   *res;
	const char *params[2];
	int			row = 0;

	foreach(lc, mts)
	{
		MirrorTable *mt = lfirst(lc);

		schemas = lappend(schemas, mt->source_schema);
		names = lappend(names, mt->source_table);
	}
	params[0] = source_text_array(schemas);
	params[1] = source_text_array(names);
	res = source_query(conn,
					   "SELECT c.oid, c.relkind, c.relpersistence, "
					   "       has_table_privilege(c.oid, 'SELECT'), "
					   "       greatest(c.relpages::bigint, pg_relation_size(c.oid) / current_setting('block_size')::int), "
					   "       " ESTIMATED_ROWS_SQL " "
					   "  FROM ROWS FROM (unnest($1::text[]), unnest($2::text[])) WITH ORDINALITY u(nsp, rel, ord) "
					   "  LEFT JOIN (pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace) "
					   "         ON n.nspname = u.nsp AND c.relname = u.rel "
					   " ORDER BY u.ord",
					   2, params, PGRES_TUPLES_OK);
	foreach(lc, mts)
	{
		MirrorTable *mt = lfirst(lc);
		SourceTable *st = palloc0(sizeof(SourceTable));
		const char *name = source_qname(mt->source_schema, mt->source_table);
		char		relpersistence;
		bool		can_select;

		st->mt = mt;
		if (PQgetisnull(res, row, 0))
		{
			PQclear(res);
			bunny_mark_permanent();
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("source table %s does not exist", name),
					 errhint("Create the table on the source, or check the mapping: an unquoted name is folded to lower case, "
							 "and an unqualified one means schema public.")));
		}
		st->relid = (Oid) strtoul(PQgetvalue(res, row, 0), NULL, 10);
		st->relkind = PQgetvalue(res, row, 1)[0];
		relpersistence = PQgetvalue(res, row, 2)[0];
		can_select = PQgetvalue(res, row, 3)[0] == 't';
		st->relpages = strtoll(PQgetvalue(res, row, 4), NULL, 10);
		st->reltuples = strtoll(PQgetvalue(res, row, 5), NULL, 10);
		row++;

		if (st->relkind != 'r' && st->relkind != 'p')
		{
			PQclear(res);
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
			PQclear(res);
			bunny_mark_permanent();
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("source table %s is %s", name, relpersistence == 'u' ? "unlogged" : "temporary"),
					 errdetail("Changes to unlogged and temporary tables are not written to the WAL, so logical replication cannot carry them."),
					 errhint("Run ALTER TABLE %s SET LOGGED on the source, or leave the table out of the mirror.", name)));
		}
		if (st->relkind == 'p' && !info->publish_partitioned)
		{
			PQclear(res);
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
			PQclear(res);
			bunny_mark_permanent();
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for source table %s", name),
					 errhint("Run GRANT SELECT ON %s TO %s on the source.",
							 name, quote_identifier(PQuser(conn)))));
		}
		tables = lappend(tables, st);
	}
	PQclear(res);
	return tables;
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
check_replica_identities(PGconn *conn, List *tables, HTAB *hash)
{
	PGresult   *res;
	const char *params[1];
	SourceTable *current = NULL;
	char		root_replident = 'd';

	/*
	 * One row per relation whose replica identity matters, each table
	 * itself first, then every leaf of a partitioned table: its replica
	 * identity, whether that is usable, and the columns it is made of.
	 * The leaves are found through an array so that pg_class is read by
	 * its index.
	 */
	params[0] = describe_oids(tables);
	res = source_query(conn,
					   "SELECT r.root, quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
					   "       c.relreplident, "
					   "       CASE c.relreplident "
					   "         WHEN 'f' THEN true WHEN 'n' THEN false "
					   "         ELSE EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid "
					   "                         AND CASE c.relreplident WHEN 'i' THEN i.indisreplident "
					   "                                                 ELSE i.indisprimary END) END, "
					   "       ARRAY(SELECT a.attname FROM pg_attribute a "
					   "              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
					   "                AND (c.relreplident = 'f' OR a.attnum IN "
					   "                     (SELECT unnest(i.indkey) FROM pg_index i WHERE i.indrelid = c.oid "
					   "                         AND CASE c.relreplident WHEN 'i' THEN i.indisreplident "
					   "                                                 ELSE i.indisprimary END)) "
					   "              ORDER BY a.attname)::text[], "
					   "       c.oid = r.root "
					   "  FROM unnest($1::oid[]) r(root) "
					   "  CROSS JOIN LATERAL (SELECT ARRAY(SELECT r.root UNION ALL "
					   "                                  SELECT t.relid FROM pg_partition_tree(r.root) t "
					   "                                   WHERE t.isleaf AND t.relid <> r.root) AS oids) x "
					   "  JOIN pg_class c ON c.oid = ANY (x.oids) "
					   "  JOIN pg_namespace n ON n.oid = c.relnamespace "
					   " ORDER BY r.root, c.oid <> r.root, 2",
					   1, params, PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++)
	{
		SourceTable *st = describe_row_table(hash, res, i);
		const char *name = source_qname(st->mt->source_schema, st->mt->source_table);
		const char *rel = pstrdup(PQgetvalue(res, i, 1));
		char		replident = PQgetvalue(res, i, 2)[0];
		bool		usable = PQgetvalue(res, i, 3)[0] == 't';
		bool		is_self = PQgetvalue(res, i, 5)[0] == 't';
		char	   *excluded_key_column = NULL;
		ListCell   *lc;

		if (st != current)
		{
			current = st;
			root_replident = 'd';
		}
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

		/*
		 * An excluded column must not be part of the replica identity (the
		 * first by name, as the columns come sorted).
		 */
		foreach(lc, parse_text_array(PQgetvalue(res, i, 4)))
			if (excluded_key_column == NULL && string_in_list(st->mt->exclude_columns, lfirst(lc)))
				excluded_key_column = lfirst(lc);
		if (excluded_key_column != NULL)
		{
			PQclear(res);
			bunny_mark_permanent();
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("column \"%s\" of source table %s is part of %s replica identity and cannot be excluded",
							excluded_key_column, name, is_self ? "its" : psprintf("partition %s's", rel)),
					 replident == 'f' ?
					 errdetail("With REPLICA IDENTITY FULL every column identifies a row, and PostgreSQL refuses UPDATE and DELETE "
							   "of a published table whose column list leaves out part of its replica identity.") :
					 errdetail("PostgreSQL refuses UPDATE and DELETE of a published table whose column list leaves out "
							   "part of its replica identity."),
					 errhint("Remove \"%s\" from exclude_columns, or give the table a primary key or replica identity index "
							 "without it on the source.", excluded_key_column)));
		}
	}
	PQclear(res);
}

/*
 * The columns of tables (a text[] literal of OIDs or of quoted, qualified
 * names), in order, with their types, defaults, sequences and place in
 * the primary key, one row per column, the table's OID first; excluded is
 * left for the caller, who knows the mapping.
 */
static PGresult *
query_columns(PGconn *conn, const char *relations)
{
	const char *params[1] = {relations};

	(void) source_info(conn);	/* search_path: the query's names are pg_catalog's */
	return source_query(conn,
						"SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod) || "
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
	/* regclass::text is qualified: search_path is pg_catalog */
						"  CROSS JOIN LATERAL (SELECT pg_get_serial_sequence(a.attrelid::regclass::text, a.attname) "
						"                             AS seq) ss "
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
						" WHERE a.attrelid = ANY ($1::regclass[]) AND a.attnum > 0 AND NOT a.attisdropped "
						" ORDER BY a.attrelid, a.attnum",
						1, params, PGRES_TUPLES_OK);
}

static SourceColumn *
column_from_row(PGresult *res, int i)
{
	SourceColumn *col = palloc0(sizeof(SourceColumn));

	col->name = pstrdup(PQgetvalue(res, i, 1));
	col->type_sql = pstrdup(PQgetvalue(res, i, 2));
	col->notnull = PQgetvalue(res, i, 3)[0] == 't';
	col->typid = (Oid) strtoul(PQgetvalue(res, i, 4), NULL, 10);
	col->generated = PQgetisnull(res, i, 5) ? NULL : pstrdup(PQgetvalue(res, i, 5));
	col->default_expr = PQgetisnull(res, i, 6) ? NULL : pstrdup(PQgetvalue(res, i, 6));
	col->identity = PQgetvalue(res, i, 7)[0];
	col->serial_seq = PQgetisnull(res, i, 8) ? NULL : pstrdup(PQgetvalue(res, i, 8));
	col->key_position = atoi(PQgetvalue(res, i, 9));
	col->seq_options = PQgetisnull(res, i, 10) ? NULL : pstrdup(PQgetvalue(res, i, 10));
	col->seq_type = PQgetisnull(res, i, 11) ? NULL : pstrdup(PQgetvalue(res, i, 11));
	if (col->serial_seq == NULL && !PQgetisnull(res, i, 12))
	{
		col->default_seq_schema = pstrdup(PQgetvalue(res, i, 12));
		col->default_seq_name = pstrdup(PQgetvalue(res, i, 13));
	}
	return col;
}

/*
 * The columns of a source table (quoted, qualified name), as the mirror's
 * tables are described; bunny.sync_schema compares them
 * (bunny._source_columns).
 */
List *
source_table_columns(PGconn *conn, const char *qualified_table)
{
	PGresult   *res = query_columns(conn, source_text_array(list_make1((char *) qualified_table)));
	List	   *columns = NIL;

	for (int i = 0; i < PQntuples(res); i++)
		columns = lappend(columns, column_from_row(res, i));
	PQclear(res);
	return columns;
}

/*
 * The indexes of tables (as query_columns takes them), by name, with the
 * columns they use, the table's OID first; whether a constraint owns
 * each tells setup's secondary indexes apart.
 *
 * indkey names only the plain columns (0 stands for an expression, and the
 * predicate is not there at all): an index on lower(col), or one WHERE col
 * IS NOT NULL, would not be seen to use col, and its DDL would fail on a
 * destination where col is excluded.  The columns of expressions and
 * predicates are the index's dependencies on its table's columns
 * (pg_depend, recorded so on every supported source).  A whole-row
 * reference (an expression f(t), a predicate t IS NOT NULL) records no
 * column there, so such an index is taken to use every column
 * (WHOLE_ROW_VAR).  The key columns come first in key order; the others
 * follow by column number.
 */
/*
 * A whole-row Var as the source stores an index's expressions and
 * predicate (pg_node_tree text: "{VAR :varno 1 :varattno 0 ..." on 12 to
 * 18).  The catalogs keep no other trace of one: pg_depend records none,
 * and only a CHECK constraint's conkey says 0, so a query can see it in
 * an index only by the node's text.
 */
#define WHOLE_ROW_VAR "'%{VAR :varno 1 :varattno 0 %'"

static PGresult *
query_indexes(PGconn *conn, const char *relations)
{
	const char *params[1] = {relations};

	(void) source_info(conn);
	return source_query(conn,
						"SELECT i.indrelid, c.relname, pg_get_indexdef(i.indexrelid), i.indisprimary, "
						"       EXISTS (SELECT 1 FROM pg_constraint k "
						"                WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid), "
						"       ARRAY(SELECT a.attname FROM pg_attribute a "
						"              WHERE a.attrelid = i.indrelid AND a.attnum > 0 "
						"                AND (a.attnum = ANY (i.indkey) OR a.attnum IN "
						"                     (SELECT d.refobjsubid FROM pg_depend d "
						"                       WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid "
						"                         AND d.refclassid = 'pg_class'::regclass "
						"                         AND d.refobjid = i.indrelid AND d.refobjsubid > 0) "
						"                     OR (NOT a.attisdropped AND "
						"                         coalesce(i.indexprs::text, '') || coalesce(i.indpred::text, '') "
						"                         LIKE " WHOLE_ROW_VAR ")) "
						"              ORDER BY array_position(i.indkey::int2[], a.attnum), a.attnum)::text[] "
						"  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
						" WHERE i.indrelid = ANY ($1::regclass[]) "
						" ORDER BY i.indrelid, c.relname",
						1, params, PGRES_TUPLES_OK);
}

static SourceIndex *
index_from_row(PGresult *res, int i)
{
	SourceIndex *ix = palloc0(sizeof(SourceIndex));

	ix->name = pstrdup(PQgetvalue(res, i, 1));
	ix->def = pstrdup(PQgetvalue(res, i, 2));
	ix->isprimary = PQgetvalue(res, i, 3)[0] == 't';
	ix->constraint_owned = PQgetvalue(res, i, 4)[0] == 't';
	ix->columns_text = pstrdup(PQgetvalue(res, i, 5));
	ix->columns = parse_text_array(ix->columns_text);
	return ix;
}

/*
 * The indexes of a source table (quoted, qualified name);
 * bunny.sync_schema reads them too (bunny._source_indexes).
 */
List *
source_table_indexes(PGconn *conn, const char *qualified_table)
{
	PGresult   *res = query_indexes(conn, source_text_array(list_make1((char *) qualified_table)));
	List	   *indexes = NIL;

	for (int i = 0; i < PQntuples(res); i++)
		indexes = lappend(indexes, index_from_row(res, i));
	PQclear(res);
	return indexes;
}

/*
 * Columns, constraints, indexes no constraint owns, and the leaf
 * partitions of partitioned tables, for every table at once.  Whether a
 * constraint or index uses an excluded column is noted: what involves one
 * cannot be created on the destination.
 */
static void
describe_table_objects(PGconn *conn, List *tables, HTAB *hash)
{
	PGresult   *res;
	const char *params[1];
	List	   *partitioned = NIL;
	ListCell   *lc;

	params[0] = describe_oids(tables);

	res = query_columns(conn, params[0]);
	for (int i = 0; i < PQntuples(res); i++)
	{
		SourceTable *st = describe_row_table(hash, res, i);

		st->columns = lappend(st->columns, column_from_row(res, i));
	}
	PQclear(res);

	/*
	 * conkey has every column a CHECK uses, but of a unique, primary key or
	 * exclusion constraint only the plain key columns: INCLUDE columns are
	 * the constraint's dependencies, and an exclusion constraint's
	 * expressions and predicate its index's (conindid), as query_indexes
	 * explains.  A whole-row reference makes a CHECK's conkey say 0 and
	 * puts a WHOLE_ROW_VAR in an exclusion constraint's index: then every
	 * column counts.  A foreign key's conindid is the referenced table's
	 * index, whose dependencies are on that table, so refobjid keeps them
	 * out (and x.indrelid the whole-row test).
	 */
	res = source_query(conn,
					   "SELECT c.conrelid, c.conname, c.contype, pg_get_constraintdef(c.oid), "
					   "       ARRAY(SELECT a.attname FROM pg_attribute a "
					   "              WHERE a.attrelid = c.conrelid AND a.attnum > 0 "
					   "                AND (a.attnum = ANY (c.conkey) OR a.attnum IN "
					   "                     (SELECT d.refobjsubid FROM pg_depend d "
					   "                       WHERE d.refclassid = 'pg_class'::regclass "
					   "                         AND d.refobjid = c.conrelid AND d.refobjsubid > 0 "
					   "                         AND (d.classid, d.objid) IN "
					   "                             (('pg_constraint'::regclass, c.oid), "
					   "                              ('pg_class'::regclass, c.conindid))) "
					   "                     OR (NOT a.attisdropped AND c.contype = 'c' AND 0 = ANY (c.conkey)) "
					   "                     OR (NOT a.attisdropped AND EXISTS "
					   "                         (SELECT 1 FROM pg_index x "
					   "                           WHERE x.indexrelid = c.conindid AND x.indrelid = c.conrelid "
					   "                             AND coalesce(x.indexprs::text, '') || coalesce(x.indpred::text, '') "
					   "                                 LIKE " WHOLE_ROW_VAR "))) "
					   "              ORDER BY a.attnum)::text[], "
					   "       rn.nspname, r.relname "
					   "  FROM pg_constraint c "
					   "  LEFT JOIN pg_class r ON r.oid = c.confrelid "
					   "  LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace "
					   " WHERE c.conrelid = ANY ($1::oid[]) AND c.contype IN ('p', 'u', 'c', 'x', 'f') "
					   " ORDER BY c.conrelid, CASE c.contype WHEN 'p' THEN 0 ELSE 1 END, c.conname",
					   1, params, PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++)
	{
		SourceTable *st = describe_row_table(hash, res, i);
		SourceConstraint *con = palloc0(sizeof(SourceConstraint));

		con->name = pstrdup(PQgetvalue(res, i, 1));
		con->contype = PQgetvalue(res, i, 2)[0];
		con->def = pstrdup(PQgetvalue(res, i, 3));
		foreach(lc, parse_text_array(PQgetvalue(res, i, 4)))
			if (string_in_list(st->mt->exclude_columns, lfirst(lc)))
				con->uses_excluded = true;
		if (con->contype == 'f')
		{
			con->ref_schema = pstrdup(PQgetvalue(res, i, 5));
			con->ref_table = pstrdup(PQgetvalue(res, i, 6));
		}
		st->constraints = lappend(st->constraints, con);
	}
	PQclear(res);

	res = query_indexes(conn, params[0]);
	for (int i = 0; i < PQntuples(res); i++)
	{
		SourceTable *st = describe_row_table(hash, res, i);
		SourceIndex *ix = index_from_row(res, i);

		if (ix->constraint_owned)
			continue;
		foreach(lc, ix->columns)
			if (string_in_list(st->mt->exclude_columns, lfirst(lc)))
				ix->uses_excluded = true;
		st->indexes = lappend(st->indexes, ix);
	}
	PQclear(res);

	foreach(lc, tables)
	{
		SourceTable *st = lfirst(lc);

		if (st->relkind == 'p')
			partitioned = lappend(partitioned, st);
	}
	if (partitioned != NIL)
	{
		params[0] = describe_oids(partitioned);
		res = source_query(conn,
						   "SELECT r.root, quote_ident(n.nspname) || '.' || quote_ident(c.relname) "
						   "  FROM unnest($1::oid[]) r(root), pg_partition_tree(r.root) t "
						   "  JOIN pg_class c ON c.oid = t.relid "
						   "  JOIN pg_namespace n ON n.oid = c.relnamespace "
						   " WHERE t.isleaf ORDER BY 1, 2",
						   1, params, PGRES_TUPLES_OK);
		for (int i = 0; i < PQntuples(res); i++)
		{
			SourceTable *st = describe_row_table(hash, res, i);

			st->leaves = lappend(st->leaves, pstrdup(PQgetvalue(res, i, 1)));
		}
		PQclear(res);
	}
}

/*
 * What is checked of one described table in C: its primary key's order,
 * excluded columns and the partition key exist, an excluded column is not
 * in the primary key, something is left to replicate; with plan, the
 * bounds of an integer partition_key for the copy's ranges.
 */
static void
check_table(PGconn *conn, SourceTable *st, bool plan)
{
	MirrorTable *mt = st->mt;
	const char *name = source_qname(mt->source_schema, mt->source_table);
	ListCell   *lc;
	int			replicated_columns = 0;
	int			n = list_length(st->columns);
	char	  **pk = palloc0(sizeof(char *) * (n + 1));

	foreach(lc, st->columns)
	{
		SourceColumn *col = lfirst(lc);

		col->excluded = string_in_list(mt->exclude_columns, col->name);
		if (col->key_position > 0 && col->key_position <= n)
			pk[col->key_position - 1] = col->name;
	}
	for (int i = 0; i < n && pk[i]; i++)
		st->pk_columns = lappend(st->pk_columns, pk[i]);

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
		if (string_in_list(st->pk_columns, ex))
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
		SourceColumn *key = NULL;

		foreach(lc, st->columns)
			if (strcmp(((SourceColumn *) lfirst(lc))->name, mt->partition_key) == 0)
				key = lfirst(lc);
		if (key == NULL)
		{
			bunny_mark_permanent();
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("partition key \"%s\" does not exist in source table %s",
							mt->partition_key, name)));
		}
		/* integer keys split into ranges; others fall back to blocks */
		if (plan && (key->typid == INT2OID || key->typid == INT4OID || key->typid == INT8OID))
		{
			/* a column and a table are identifiers: no parameters */
			PGresult   *res = source_query(conn,
										   psprintf("SELECT min(%s)::int8, max(%s)::int8 FROM %s",
													quote_identifier(key->name),
													quote_identifier(key->name), name),
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
}

/*
 * Read the definitions of source tables (of MirrorTable *) and check that
 * they can be replicated without making any statement on the source fail;
 * their SourceTables in the same order.  Without plan, what only the
 * copy's plan needs (the partition key's bounds, a scan of the table) is
 * not asked.
 */
static List *
describe_tables(PGconn *conn, List *mts, bool plan)
{
	List	   *tables;
	HTAB	   *hash;
	ListCell   *lc;

	if (mts == NIL)
		return NIL;
	tables = describe_relations(conn, mts);
	hash = describe_hash(tables);
	check_replica_identities(conn, tables, hash);
	describe_table_objects(conn, tables, hash);
	foreach(lc, tables)
		check_table(conn, lfirst(lc), plan);
	hash_destroy(hash);
	return tables;
}

/* describe and check one mapped table (describe_tables) */
SourceTable *
source_describe_table(PGconn *conn, MirrorTable *mt, bool plan)
{
	return linitial(describe_tables(conn, list_make1(mt), plan));
}

/*
 * Describe every mapped table of m, all at once (describe_tables).  A
 * partition mapped next to a partitioned table it belongs to is refused:
 * its changes are published as the partitioned table's, so its own mapping
 * would never see any.
 */
List *
source_describe_tables(PGconn *conn, Mirror *m, bool plan)
{
	List	   *tables = describe_tables(conn, m->tables, plan);

	if (list_length(tables) > 1)
	{
		PGresult   *res;
		const char *params[1];

		params[0] = describe_oids(tables);
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
					   "       " ESTIMATED_ROWS_SQL " "
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

	params[0] = source_text_array(schemas);
	params[1] = source_text_array(tables);
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

