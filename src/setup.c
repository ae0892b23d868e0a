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
 * What setup asks of the source, and the checks on the answers, are
 * source.c's (source_check, source_describe_tables, ...); this file turns
 * the descriptions into destination DDL and catalog rows.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"
#include "source.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "catalog/namespace.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/*
 * A constraint or index of a source table, created on the destination after
 * the copy.  The names of primary key, unique and exclusion constraints and
 * of indexes are relation names, unique in their schema: on the
 * destination, where another table may hold the source's name already (a
 * destination_table next to its source in one database), one is chosen
 * the way PostgreSQL chooses one, when the table is created.
 */
typedef struct SourceObject
{
	const char *kind;			/* "constraint" or "index" */
	char	   *name;
	char	   *sql;			/* the DDL, naming the object "name" */
	const char *label;			/* for a new name (pkey, key, excl, idx), or
								 * NULL when the name is the table's own */
} SourceObject;

static List *created_types = NIL;	/* type OIDs handled in this run */

/*
 * Relation names this run of setup chose for objects created later (after
 * the copy), as "schema oid/name": the catalog cannot tell about those yet.
 */
static List *names_taken = NIL;

/* SPI helper for the destination side */
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

/* replace the first occurrence of from in str by to */
static char *
replace_first(const char *str, const char *from, const char *to)
{
	const char *at = strstr(str, from);
	StringInfoData buf;

	if (at == NULL)
		return NULL;
	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, str, at - str);
	appendStringInfoString(&buf, to);
	appendStringInfoString(&buf, at + strlen(from));
	return buf.data;
}

/* add {"kind": ..., "name": ..., "sql": ...} to a JSON array under construction */
static void
ddl_item(StringInfo arr, const char *kind, const char *name, const char *sql)
{
	appendStringInfoString(arr, arr->len > 1 ? ", {\"kind\": " : "{\"kind\": ");
	escape_json(arr, kind);
	appendStringInfoString(arr, ", \"name\": ");
	escape_json(arr, name);
	appendStringInfoString(arr, ", \"sql\": ");
	escape_json(arr, sql);
	appendStringInfoChar(arr, '}');
}

/*
 * What the destination table gets once its data is in: constraints
 * (primary key, unique, check, exclusion) and indexes of st, rewritten for
 * the destination name.  Anything that involves an excluded column is
 * left out; foreign keys are foreign_key_ddl's.
 */
static List *
table_objects(SourceTable *st)
{
	MirrorTable *mt = st->mt;
	const char *src = qname(mt->source_schema, mt->source_table);
	const char *dest = qname(mt->dest_schema, mt->dest_table);
	List	   *objects = NIL;
	ListCell   *lc;

	foreach(lc, st->constraints)
	{
		SourceConstraint *con = lfirst(lc);
		SourceObject *o;

		if (con->contype == 'f' || con->uses_excluded)
			continue;
		o = palloc0(sizeof(SourceObject));
		o->kind = "constraint";
		o->name = con->name;
		o->sql = psprintf("ALTER TABLE %s ADD CONSTRAINT %s %s", dest,
						  quote_identifier(con->name), con->def);
		o->label = con->contype == 'p' ? "pkey" : con->contype == 'u' ? "key" :
			con->contype == 'x' ? "excl" : NULL;
		objects = lappend(objects, o);
	}
	foreach(lc, st->indexes)
	{
		SourceIndex *ix = lfirst(lc);
		SourceObject *o;
		char	   *sql;

		if (ix->uses_excluded)
			continue;
		sql = replace_first(ix->def, psprintf(" ON ONLY %s USING ", src), psprintf(" ON %s USING ", dest));
		if (sql == NULL)
			sql = replace_first(ix->def, psprintf(" ON %s USING ", src), psprintf(" ON %s USING ", dest));
		if (sql == NULL)
			continue;			/* not in the form we know; leave it out */
		if (strncmp(sql, "CREATE UNIQUE INDEX ", 20) == 0)
			sql = psprintf("CREATE UNIQUE INDEX IF NOT EXISTS %s", sql + 20);
		else if (strncmp(sql, "CREATE INDEX ", 13) == 0)
			sql = psprintf("CREATE INDEX IF NOT EXISTS %s", sql + 13);
		o = palloc0(sizeof(SourceObject));
		o->kind = "index";
		o->name = ix->name;
		o->sql = sql;
		o->label = "idx";
		objects = lappend(objects, o);
	}
	return objects;
}

/*
 * The foreign keys of st as DDL items, pointing at the destination names of
 * the referenced tables; a key to a table this mirror does not map, or on
 * an excluded column, is left out (and logged).  Keys are created
 * DEFERRABLE INITIALLY DEFERRED.
 */
static char *
foreign_key_ddl(SourceTable *st, List *tables, const char *mirror_name)
{
	StringInfoData arr;
	ListCell   *lc;
	const char *dest = qname(st->mt->dest_schema, st->mt->dest_table);

	initStringInfo(&arr);
	appendStringInfoChar(&arr, '[');
	foreach(lc, st->constraints)
	{
		SourceConstraint *fk = lfirst(lc);
		SourceTable *ref = NULL;
		ListCell   *lc2;
		char	   *def;
		char	   *p;

		if (fk->contype != 'f')
			continue;
		foreach(lc2, tables)
		{
			SourceTable *t = lfirst(lc2);

			if (strcmp(t->mt->source_schema, fk->ref_schema) == 0 &&
				strcmp(t->mt->source_table, fk->ref_table) == 0)
				ref = t;
		}
		if (ref == NULL || fk->uses_excluded)
		{
			bunny_log(mirror_name, "WARNING",
					  psprintf("foreign key %s of %s is not replicated: %s", quote_identifier(fk->name),
							   dest, ref ? "it uses an excluded column" :
							   "the referenced table is not part of the mirror"), NULL);
			continue;
		}
		def = replace_first(fk->def,
							psprintf("REFERENCES %s(", qname(fk->ref_schema, fk->ref_table)),
							psprintf("REFERENCES %s(", qname(ref->mt->dest_schema, ref->mt->dest_table)));
		if (def == NULL)
			continue;
		/* strip the source's deferrability, then make it deferred */
		while ((p = strstr(def, " DEFERRABLE")) != NULL)
			memmove(p, p + 11, strlen(p + 11) + 1);
		while ((p = strstr(def, " INITIALLY DEFERRED")) != NULL)
			memmove(p, p + 19, strlen(p + 19) + 1);
		p = strstr(def, " NOT VALID");
		if (p)
		{
			*p = '\0';
			def = psprintf("%s DEFERRABLE INITIALLY DEFERRED NOT VALID", def);
		}
		else
			def = psprintf("%s DEFERRABLE INITIALLY DEFERRED", def);
		ddl_item(&arr, "constraint", fk->name,
				 psprintf("ALTER TABLE %s ADD CONSTRAINT %s %s", dest,
						  quote_identifier(fk->name), def));
	}
	appendStringInfoChar(&arr, ']');
	return arr.data;
}

/*
 * Create a user-defined type on the destination unless a type of that name
 * exists, after the types it depends on.  Enums, domains and composites are
 * copied; other kinds must already exist (for example from an extension).
 */
static void
ensure_type(PGconn *conn, Oid typid, const char *mirror_name)
{
	SourceType *t;
	StringInfoData ddl;
	ListCell   *lc;

	if (typid < FirstNormalObjectId || list_member_oid(created_types, typid))
		return;
	created_types = lappend_oid(created_types, typid);

	t = source_describe_type(conn, typid);
	if (t == NULL)
		return;					/* dropped meanwhile; table DDL will tell */
	if (t->typcategory == 'A' && t->elem != InvalidOid)
	{
		/* an array: its element type brings it along */
		ensure_type(conn, t->elem, mirror_name);
		return;
	}

	if (dest_exists("SELECT 1 FROM pg_catalog.pg_type t "
					"  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
					" WHERE n.nspname = $1 AND t.typname = $2", t->nspname, t->typname))
		return;

	if (t->extname != NULL || (t->typtype != 'e' && t->typtype != 'd' && t->typtype != 'c'))
	{
		bunny_mark_permanent();
		if (t->extname)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("type %s does not exist on the destination", qname(t->nspname, t->typname)),
					 errdetail("The type belongs to extension \"%s\" on the source.", t->extname),
					 errhint("Run CREATE EXTENSION %s in the destination database.",
							 quote_identifier(t->extname))));
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("type %s does not exist on the destination and cannot be created automatically",
						qname(t->nspname, t->typname)),
				 errhint("Create the type on the destination, then call bunny.retry_mirror().")));
	}

	initStringInfo(&ddl);
	appendStringInfo(&ddl, "CREATE SCHEMA IF NOT EXISTS %s", quote_identifier(t->nspname));
	bunny_dest_exec(ddl.data);
	resetStringInfo(&ddl);

	if (t->typtype == 'e')
	{
		List	   *labels = source_enum_labels(conn, t->nspname, t->typname);

		appendStringInfo(&ddl, "CREATE TYPE %s AS ENUM (", qname(t->nspname, t->typname));
		foreach(lc, labels)
			appendStringInfo(&ddl, "%s%s", lc == list_head(labels) ? "" : ", ",
							 quote_literal_cstr((char *) lfirst(lc)));
		appendStringInfoChar(&ddl, ')');
	}
	else if (t->typtype == 'd')
	{
		ensure_type(conn, t->basetype, mirror_name);
		appendStringInfo(&ddl, "CREATE DOMAIN %s AS %s", qname(t->nspname, t->typname),
						 t->basetype_sql);
		if (t->typdefault)
			appendStringInfo(&ddl, " DEFAULT %s", t->typdefault);
		if (t->notnull)
			appendStringInfoString(&ddl, " NOT NULL");
		foreach(lc, source_domain_checks(conn, typid))
		{
			SourceNamedDef *c = lfirst(lc);

			appendStringInfo(&ddl, " CONSTRAINT %s %s", quote_identifier(c->name), c->def);
		}
	}
	else
	{
		List	   *atts = source_type_attributes(conn, t->typrelid);

		appendStringInfo(&ddl, "CREATE TYPE %s AS (", qname(t->nspname, t->typname));
		foreach(lc, atts)
		{
			SourceNamedDef *a = lfirst(lc);

			appendStringInfo(&ddl, "%s%s %s", lc == list_head(atts) ? "" : ", ",
							 quote_identifier(a->name), a->def);
		}
		appendStringInfoChar(&ddl, ')');
		foreach(lc, atts)
			ensure_type(conn, ((SourceNamedDef *) lfirst(lc))->typid, mirror_name);
	}
	bunny_dest_exec(ddl.data);
	bunny_log(mirror_name, "INFO",
			  psprintf("created type %s on the destination", qname(t->nspname, t->typname)),
			  NULL);
}

/* text[] literal of a list of C strings, for SPI */
static Datum
text_array(List *items)
{
	Datum	   *d = palloc(sizeof(Datum) * (list_length(items) + 1));
	int			n = 0;
	ListCell   *lc;

	foreach(lc, items)
		d[n++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(d, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/* add {"from": ..., "where": ...} to a JSON array under construction */
static void
part_item(StringInfo arr, const char *from, const char *where)
{
	appendStringInfoString(arr, arr->len > 1 ? ", {\"from\": " : "{\"from\": ");
	escape_json(arr, from);
	if (where)
	{
		appendStringInfoString(arr, ", \"where\": ");
		escape_json(arr, where);
	}
	appendStringInfoChar(arr, '}');
}

/*
 * Split a table's copy into parts: one per leaf partition of a partitioned
 * source; ranges of an integer partition_key; else ranges of heap blocks
 * (TID range scans).  The first and last ranges are open-ended, so rows
 * beyond the estimates are still copied exactly once.
 */
static char *
plan_parts(SourceTable *st, int rows_per_part)
{
	StringInfoData arr;
	const char *src = qname(st->mt->source_schema, st->mt->source_table);
	int64		nparts = 1;

	initStringInfo(&arr);
	appendStringInfoChar(&arr, '[');
	if (st->relkind == 'p')
	{
		ListCell   *lc;

		foreach(lc, st->leaves)
			part_item(&arr, (char *) lfirst(lc), NULL);
		if (st->leaves == NIL)
			part_item(&arr, src, NULL);
		appendStringInfoChar(&arr, ']');
		return arr.data;
	}

	if (st->reltuples > rows_per_part)
		nparts = (st->reltuples + rows_per_part - 1) / rows_per_part;
	if (st->key_ranges)
	{
		int64		span = st->key_max - st->key_min + 1;
		const char *k = quote_identifier(st->mt->partition_key);

		nparts = Min(nparts, Max(span, 1));
		for (int64 i = 0; i < nparts; i++)
		{
			int64		lo = st->key_min + span * i / nparts;
			int64		hi = st->key_min + span * (i + 1) / nparts;
			char	   *where;

			if (nparts == 1)
				where = NULL;
			else if (i == 0)
				where = psprintf("%s < " INT64_FORMAT " OR %s IS NULL", k, hi, k);
			else if (i == nparts - 1)
				where = psprintf("%s >= " INT64_FORMAT, k, lo);
			else
				where = psprintf("%s >= " INT64_FORMAT " AND %s < " INT64_FORMAT, k, lo, k, hi);
			part_item(&arr, psprintf("ONLY %s", src), where);
		}
	}
	else
	{
		int64		pages = Max(st->relpages, 1);
		int64		per;

		nparts = Min(nparts, pages);
		per = (pages + nparts - 1) / nparts;
		for (int64 i = 0; i < nparts; i++)
		{
			int64		lo = i * per;
			int64		hi = (i + 1) * per;
			char	   *where;

			if (nparts == 1)
				where = NULL;
			else if (i == 0)
				where = psprintf("ctid < '(" INT64_FORMAT ",0)'::tid", hi);
			else if (i == nparts - 1)
				where = psprintf("ctid >= '(" INT64_FORMAT ",0)'::tid", lo);
			else
				where = psprintf("ctid >= '(" INT64_FORMAT ",0)'::tid AND ctid < '(" INT64_FORMAT ",0)'::tid",
								 lo, hi);
			part_item(&arr, psprintf("ONLY %s", src), where);
		}
	}
	appendStringInfoChar(&arr, ']');
	return arr.data;
}

/*
 * Binary COPY is safe when every copied column has the same built-in type
 * on both sides: binary array and record values embed type OIDs, which
 * differ between servers for user-defined types.
 */
static bool
copy_binary_safe(SourceTable *st)
{
	Oid			nspid = get_namespace_oid(st->mt->dest_schema, true);
	Oid			relid = OidIsValid(nspid) ? get_relname_relid(st->mt->dest_table, nspid) : InvalidOid;
	ListCell   *lc;

	if (!OidIsValid(relid))
		return false;
	foreach(lc, st->columns)
	{
		SourceColumn *col = lfirst(lc);
		AttrNumber	attnum;

		if (col->excluded || col->generated)
			continue;
		attnum = get_attnum(relid, col->name);
		if (col->typid >= FirstNormalObjectId || attnum == InvalidAttrNumber ||
			get_atttype(relid, attnum) != col->typid)
			return false;
	}
	return true;
}

/*
 * Create a sequence (qualified name) like the source's one of the column:
 * type, increment, bounds, start, cache and cycle.  With default options a
 * descending sequence, or one with other bounds, could not take over the
 * source's value.
 */
static void
create_sequence_like(const char *seq, SourceColumn *col)
{
	bunny_dest_exec(psprintf("CREATE SEQUENCE IF NOT EXISTS %s%s%s%s%s", seq,
							 col->seq_type ? " AS " : "",
							 col->seq_type ? col->seq_type : "",
							 col->seq_options ? " " : "",
							 col->seq_options ? col->seq_options : ""));
}

/* one {"source", "dest", "column"} element of mirror_table.sequences */
static void
append_sequence_json(StringInfo seqs, const char *source, const char *dest,
					 const char *column)
{
	appendStringInfo(seqs, "%s{\"source\": ", seqs->len > 1 ? ", " : "");
	escape_json(seqs, source);
	appendStringInfoString(seqs, ", \"dest\": ");
	escape_json(seqs, dest);
	appendStringInfoString(seqs, ", \"column\": ");
	escape_json(seqs, column);
	appendStringInfoChar(seqs, '}');
}

/*
 * Record in bunny.mirror_table what the copy of st reads and how it is
 * split: the source's kind, the columns, the parts, the size estimates and
 * whether binary COPY is safe.  Setup records it when it prepares a table,
 * and a resync again from the source as it is then.
 */
static void
record_copy_plan(SourceTable *st, Mirror *m, List *copy_columns)
{
	Oid			types[9] = {INT4OID, TEXTOID, TEXTOID, CHAROID, TEXTARRAYOID, TEXTOID,
	INT8OID, INT8OID, BOOLOID};
	Datum		vals[9];

	vals[0] = Int32GetDatum(m->id);
	vals[1] = CStringGetTextDatum(st->mt->source_schema);
	vals[2] = CStringGetTextDatum(st->mt->source_table);
	vals[3] = CharGetDatum(st->relkind);
	vals[4] = text_array(copy_columns);
	vals[5] = CStringGetTextDatum(plan_parts(st, m->snapshot_rows_per_partition));
	vals[6] = Int64GetDatum(st->relpages);
	vals[7] = Int64GetDatum(st->reltuples);
	vals[8] = BoolGetDatum(copy_binary_safe(st));
	SPI_connect();
	SPI_execute_with_args("UPDATE bunny.mirror_table "
						  "   SET source_relkind = $4, copy_columns = $5::name[], copy_parts = $6::jsonb, "
						  "       source_pages = $7, source_rows = $8, copy_binary = $9 "
						  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
						  9, types, vals, NULL, false, 0);
	SPI_finish();
}

/*
 * A name in schema nspid for a relation (a sequence, an index, or a
 * constraint's index) that the source calls name: the source's own when it
 * is free, else one PostgreSQL would choose for dest_table and label
 * (ChooseRelationName: <table>_<label>, then with a number).
 */
static char *
choose_relation_name(const char *name, const char *dest_table, const char *extra,
					 const char *label, Oid nspid, bool isconstraint)
{
	char	   *chosen = pstrdup(name);

	for (int n = 0;; n++)
	{
		char	   *key = psprintf("%u/%s", nspid, chosen);
		ListCell   *lc;
		bool		taken = OidIsValid(get_relname_relid(chosen, nspid));

		foreach(lc, names_taken)
			if (strcmp((char *) lfirst(lc), key) == 0)
				taken = true;
		if (!taken)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			names_taken = lappend(names_taken, pstrdup(key));
			MemoryContextSwitchTo(old);
			return chosen;
		}
		/* ChooseRelationName only knows the catalog: number past our own */
		chosen = ChooseRelationName(dest_table, n == 0 ? extra : psprintf("%s%d", extra ? extra : "", n),
									label, nspid, isconstraint);
	}
}

/*
 * The constraints and indexes of st, as the JSON array of DDL items that
 * bunny._apply_ddl runs after the copy, each under a name free in the
 * destination schema (nspid).
 */
static char *
post_copy_ddl_json(SourceTable *st, Oid nspid)
{
	StringInfoData arr;
	ListCell   *lc;

	initStringInfo(&arr);
	appendStringInfoChar(&arr, '[');
	foreach(lc, table_objects(st))
	{
		SourceObject *o = lfirst(lc);
		char	   *name = o->name;
		char	   *sql = o->sql;

		if (o->label != NULL)
		{
			name = choose_relation_name(o->name, st->mt->dest_table, NULL, o->label, nspid,
										strcmp(o->kind, "constraint") == 0);
			if (strcmp(name, o->name) != 0)
			{
				const char *from = strcmp(o->kind, "index") == 0 ?
				psprintf(" INDEX IF NOT EXISTS %s ON ", quote_identifier(o->name)) :
				psprintf(" ADD CONSTRAINT %s ", quote_identifier(o->name));
				const char *to = strcmp(o->kind, "index") == 0 ?
				psprintf(" INDEX IF NOT EXISTS %s ON ", quote_identifier(name)) :
				psprintf(" ADD CONSTRAINT %s ", quote_identifier(name));

				sql = replace_first(o->sql, from, to);
				if (sql == NULL)
					continue;	/* not in the form we know; leave it out */
			}
		}
		ddl_item(&arr, o->kind, name, sql);
	}
	appendStringInfoChar(&arr, ']');
	return arr.data;
}

/*
 * Create the destination table unless it exists, and record in
 * bunny.mirror_table what the copy and the post-copy steps need.  A table
 * bunnydb creates gets columns, types, NOT NULL, defaults and their
 * sequences (owned by the column or not) at once; its constraints and
 * indexes come after the copy (or at once when there is no copy).  A
 * table that already existed is the user's: it is used as it is.
 */
static void
ensure_table(SourceTable *st, Mirror *m, List *tables, bool copy)
{
	MirrorTable *mt = st->mt;
	const char *dest = qname(mt->dest_schema, mt->dest_table);
	StringInfoData ddl;
	StringInfoData seqs;
	ListCell   *lc;
	bool		first = true;
	bool		created = false;
	List	   *copy_columns = NIL;
	List	   *identity_columns = NIL;
	List	   *serial_seqs = NIL;	/* destination names of serial sequences */
	char	   *fk_json = "[]";
	char	   *post_ddl = "[]";
	Oid			nspid = InvalidOid;

	initStringInfo(&seqs);
	appendStringInfoChar(&seqs, '[');

	if (!dest_exists("SELECT 1 FROM pg_catalog.pg_class c "
					 "  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
					 " WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
					 mt->dest_schema, mt->dest_table))
	{
		initStringInfo(&ddl);
		appendStringInfo(&ddl, "CREATE SCHEMA IF NOT EXISTS %s", quote_identifier(mt->dest_schema));
		bunny_dest_exec(ddl.data);
		resetStringInfo(&ddl);
		nspid = get_namespace_oid(mt->dest_schema, false);

		appendStringInfo(&ddl, "CREATE TABLE %s (", dest);
		foreach(lc, st->columns)
		{
			SourceColumn *col = lfirst(lc);

			if (col->excluded)
				continue;
			appendStringInfo(&ddl, "%s%s %s", first ? "" : ", ",
							 quote_identifier(col->name), col->type_sql);
			first = false;
			if (col->generated)
				appendStringInfo(&ddl, " GENERATED ALWAYS AS (%s) STORED", col->generated);
			else if (col->identity == 'a' || col->identity == 'd')
			{
				/* BY DEFAULT: replicated rows carry their values */
				appendStringInfoString(&ddl, " GENERATED BY DEFAULT AS IDENTITY");
				/* the source's bounds and direction, or the takeover fails */
				if (col->seq_options)
					appendStringInfo(&ddl, " (%s)", col->seq_options);
				identity_columns = lappend(identity_columns, col);
			}
			else if (col->serial_seq)
			{
				List	   *parts = stringToQualifiedNameList(col->serial_seq);
				char	   *seqname = choose_relation_name(strVal(llast(parts)), mt->dest_table,
														   col->name, "seq", nspid, false);
				char	   *seq = (char *) qname(mt->dest_schema, seqname);

				serial_seqs = lappend(serial_seqs, seqname);

				create_sequence_like(seq, col);
				appendStringInfo(&ddl, " DEFAULT pg_catalog.nextval(%s::pg_catalog.regclass)",
								 quote_literal_cstr(seq));
				append_sequence_json(&seqs, col->serial_seq, seq, col->name);
			}
			else if (col->default_seq_name && col->default_expr)
			{
				/*
				 * A sequence no column owns (CREATE SEQUENCE, then DEFAULT
				 * nextval(...)), perhaps shared by several tables: made under
				 * its own name, so that the source's default expression,
				 * which names it schema-qualified, works as it is.
				 */
				char	   *seq = (char *) qname(col->default_seq_schema, col->default_seq_name);

				bunny_dest_exec(psprintf("CREATE SCHEMA IF NOT EXISTS %s",
										 quote_identifier(col->default_seq_schema)));
				create_sequence_like(seq, col);
				appendStringInfo(&ddl, " DEFAULT %s", col->default_expr);
				append_sequence_json(&seqs, seq, seq, col->name);
			}
			else if (col->default_expr && strstr(col->default_expr, "nextval(") == NULL)
				appendStringInfo(&ddl, " DEFAULT %s", col->default_expr);
			if (col->notnull)
				appendStringInfoString(&ddl, " NOT NULL");
		}
		appendStringInfoChar(&ddl, ')');
		bunny_dest_exec(ddl.data);
		created = true;

		/* serial sequences belong to their column; identity ones are found */
		{
			ListCell   *seqlc = list_head(serial_seqs);

			foreach(lc, st->columns)
			{
				SourceColumn *col = lfirst(lc);

				if (col->serial_seq && !col->excluded && !col->generated &&
					col->identity != 'a' && col->identity != 'd')
				{
					bunny_dest_exec(psprintf("ALTER SEQUENCE %s OWNED BY %s.%s",
											 qname(mt->dest_schema, (char *) lfirst(seqlc)), dest,
											 quote_identifier(col->name)));
					seqlc = lnext(serial_seqs, seqlc);
				}
			}
		}
		foreach(lc, identity_columns)
		{
			SourceColumn *col = lfirst(lc);
			Oid			types[2] = {TEXTOID, TEXTOID};
			Datum		vals[2];
			char	   *seq;

			vals[0] = CStringGetTextDatum(dest);
			vals[1] = CStringGetTextDatum(col->name);
			seq = bunny_spi_scalar("SELECT pg_catalog.pg_get_serial_sequence($1, $2)",
								   2, types, vals, NULL);
			if (seq == NULL || col->serial_seq == NULL)
				continue;
			append_sequence_json(&seqs, col->serial_seq, seq, col->name);
		}
		bunny_log(m->name, "INFO", psprintf("created destination table %s", dest), NULL);
		fk_json = foreign_key_ddl(st, tables, m->name);
		post_ddl = post_copy_ddl_json(st, nspid);
	}
	appendStringInfoChar(&seqs, ']');

	foreach(lc, st->columns)
	{
		SourceColumn *col = lfirst(lc);

		if (!col->excluded && !col->generated)
			copy_columns = lappend(copy_columns, col->name);
	}

	CommandCounterIncrement();
	record_copy_plan(st, m, copy_columns);
	{
		Oid			types[7] = {INT4OID, TEXTOID, TEXTOID, BOOLOID, TEXTOID, TEXTOID, TEXTOID};
		Datum		vals[7];

		vals[0] = Int32GetDatum(m->id);
		vals[1] = CStringGetTextDatum(mt->source_schema);
		vals[2] = CStringGetTextDatum(mt->source_table);
		vals[3] = BoolGetDatum(created);
		vals[4] = CStringGetTextDatum(post_ddl);
		vals[5] = CStringGetTextDatum(fk_json);
		vals[6] = CStringGetTextDatum(seqs.data);
		SPI_connect();
		SPI_execute_with_args("UPDATE bunny.mirror_table "
							  "   SET created_by_bunny = created_by_bunny OR $4, "
							  "       post_copy_ddl = CASE WHEN $4 THEN $5::jsonb ELSE post_copy_ddl END, "
							  "       fk_ddl = CASE WHEN $4 THEN $6::jsonb ELSE fk_ddl END, "
							  "       sequences = CASE WHEN $4 THEN $7::jsonb ELSE sequences END "
							  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
							  7, types, vals, NULL, false, 0);
		SPI_finish();
	}

	/* without a copy, the table is complete at once */
	if (created && !copy)
		catalog_apply_ddl(m->name, dest, post_ddl, m->replicate_indexes);
}

/*
 * Create the slot.  A slot of that name that we asked for earlier (a crash
 * during setup) is dropped first: nothing was applied from it.  Returns the
 * consistent point; *snapshot gets the exported snapshot's name if asked.
 */
static XLogRecPtr
create_slot(PGconn *conn, Mirror *m, bool export_snapshot, char **snapshot)
{
	bool		exists = source_slot_exists(conn, m->slot_name, NULL, NULL);

	if (exists && !m->slot_requested)
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("replication slot \"%s\" already exists on the source and does not belong to this mirror",
						m->slot_name),
				 errhint("If it is a leftover, drop it on the source with SELECT pg_drop_replication_slot('%s'), then call bunny.retry_mirror().",
						 m->slot_name)));
	}
	if (exists)
		source_drop_slot(conn, m->slot_name, 5000);

	/* record the request durably before making it */
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	catalog_set_slot_requested(m->id);
	PopActiveSnapshot();
	CommitTransactionCommand();
	/* the worker commits asynchronously; this one must survive a crash */
	XLogFlush(XactLastCommitEnd);
	m->slot_requested = true;

	return stream_create_slot(conn, m->slot_name, false, export_snapshot, snapshot);
}

/*
 * Create the types and tables the mapped tables need on the destination
 * (only those still PENDING when pending_only); in the caller's
 * transaction.  Returns how many tables it handled.
 */
static int
prepare_destination(PGconn *conn, Mirror *m, List *tables, bool copy, bool pending_only)
{
	ListCell   *lc;
	int			n = 0;

	created_types = NIL;
	list_free_deep(names_taken);
	names_taken = NIL;
	foreach(lc, tables)
	{
		SourceTable *st = lfirst(lc);
		ListCell   *lc2;
		BunnyErrorContext errctx;

		if (pending_only && st->mt->status != TABLE_PENDING)
			continue;
		bunny_errcontext_push(&errctx, NULL, qname(st->mt->dest_schema, st->mt->dest_table),
							  InvalidXLogRecPtr);
		foreach(lc2, st->columns)
		{
			SourceColumn *col = lfirst(lc2);

			if (!col->excluded)
				ensure_type(conn, col->typid, m->name);
		}
		ensure_table(st, m, tables, copy);
		n++;
		bunny_errcontext_pop(&errctx);
	}
	return n;
}

/* apply foreign keys, then sequence values, of every table bunnydb created */
static void
setup_finish_tables_without_copy(PGconn *conn, Mirror *m)
{
	int			rc;
	Oid			types[1] = {INT4OID};
	Datum		vals[1] = {Int32GetDatum(m->id)};

	if (m->replicate_foreign_keys)
	{
		SPI_connect();
		rc = SPI_execute_with_args("SELECT bunny._apply_ddl(m.name, "
								   "         format('%I.%I', t.destination_schema, t.destination_table)::regclass, "
								   "         t.fk_ddl) "
								   "  FROM bunny.mirror_table t JOIN bunny.mirror m ON m.id = t.mirror_id "
								   " WHERE t.mirror_id = $1 AND t.created_by_bunny",
								   1, types, vals, NULL, false, 0);
		SPI_finish();
		if (rc < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not create foreign keys on the destination")));
	}
	{
		char	   *seqs = bunny_spi_scalar("SELECT coalesce(jsonb_agg(s), '[]')::text "
											"  FROM bunny.mirror_table t, jsonb_array_elements(t.sequences) s "
											" WHERE t.mirror_id = $1 AND t.created_by_bunny",
											1, types, vals, NULL);

		snapshot_sync_sequences(conn, m->name, seqs);
	}
}

/*
 * Run the SETUP phase on the given replication connection: destination
 * tables, publication and slot.  Returns the slot's consistent point, where
 * streaming starts.  When the mirror copies its tables first, *snapshot
 * gets the snapshot the slot exported; it lives only as long as conn stays
 * open and idle, so the caller copies with it before using conn again.
 * The copy and the switch to CDC are the worker's next steps, not ours:
 * setup does not know how its mirror goes on.
 */
XLogRecPtr
setup_run(PGconn *conn, Mirror *m, char **snapshot)
{
	List	   *tables = NIL;
	XLogRecPtr	start_lsn;
	bool		copy = m->do_initial_snapshot;

	*snapshot = NULL;
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	catalog_set_status_phase(m->id, MIRROR_SETUP, PHASE_SETUP);
	bunny_log(m->name, "INFO", "setup started", NULL);
	PopActiveSnapshot();
	CommitTransactionCommand();

	pgstat_report_activity(STATE_RUNNING, "bunnydb: setup");
	(void) source_check(conn);
	tables = source_describe_tables(conn, m, true);

	/* destination: schemas, types, tables (and, without a copy, the rest) */
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	prepare_destination(conn, m, tables, copy, false);
	if (!copy)
		setup_finish_tables_without_copy(conn, m);
	PopActiveSnapshot();
	CommitTransactionCommand();

	source_ensure_publication(conn, m, tables);

	start_lsn = create_slot(conn, m, copy, snapshot);
	bunny_log(m->name, "INFO",
			  psprintf("created replication slot %s on the source at %X/%X",
					   m->slot_name, LSN_FORMAT_ARGS(start_lsn)), NULL);
	return start_lsn;
}

/*
 * The checks of setup, run by create_mirror and update_tables before they
 * commit, so that what the source cannot carry, or would make the source's
 * own statements fail, is refused at once with nothing created (the
 * caller's transaction rolls back).  conn is a plain connection to the
 * source.  The worker runs the same checks again when it sets up.
 */
void
setup_check_source(PGconn *conn, Mirror *m)
{
	(void) source_check(conn);
	(void) source_describe_tables(conn, m, false);
}

/*
 * Plan the copy of the tables a resync is about to copy (again), from the source as it is now rather than as setup saw it: a
 * partition attached since is part of the copy and a detached one is not,
 * the parts follow the table's present size, and a column dropped on the
 * source is not asked for.  Columns the source has gained and the
 * destination lacks are added first (with the source's type and default),
 * so the copy carries their values.  The checks of source_describe_table run
 * again too.  Runs outside any transaction, before the resync's snapshot
 * is taken; conn is a plain connection to the source.
 */
void
setup_plan_resync(PGconn *conn, Mirror *m)
{
	List	   *tables = NIL;
	ListCell   *lc;

	(void) source_check(conn);

	/*
	 * Labels the source added to an enum since the types were made would
	 * fail the copy (the stream takes them over on the first failure, a
	 * COPY part only fails three times).
	 */
	setup_sync_enum_labels(m);

	foreach(lc, m->tables)
	{
		MirrorTable *mt = lfirst(lc);
		BunnyErrorContext errctx;

		if (mt->resync_state == RESYNC_NONE)
			continue;
		bunny_errcontext_push(&errctx, NULL, qname(mt->source_schema, mt->source_table),
							  InvalidXLogRecPtr);
		tables = lappend(tables, source_describe_table(conn, mt, true));
		bunny_errcontext_pop(&errctx);
	}
	if (tables == NIL)
		return;

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	foreach(lc, tables)
	{
		SourceTable *st = lfirst(lc);
		MirrorTable *mt = st->mt;
		const char *dest = qname(mt->dest_schema, mt->dest_table);
		Oid			nspid = get_namespace_oid(mt->dest_schema, true);
		Oid			relid = OidIsValid(nspid) ? get_relname_relid(mt->dest_table, nspid) : InvalidOid;
		List	   *copy_columns = NIL;
		ListCell   *lc2;
		BunnyErrorContext errctx;

		bunny_errcontext_push(&errctx, NULL, dest, InvalidXLogRecPtr);
		if (!OidIsValid(relid))
		{
			bunny_mark_permanent();
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("destination table %s does not exist", dest),
					 errhint("Recreate the table, then call bunny.retry_mirror().")));
		}
		foreach(lc2, st->columns)
		{
			SourceColumn *col = lfirst(lc2);

			if (col->excluded || col->generated)
				continue;
			if (get_attnum(relid, col->name) == InvalidAttrNumber)
			{
				ensure_type(conn, col->typid, m->name);
				bunny_dest_exec(psprintf("ALTER TABLE %s ADD COLUMN %s %s%s%s", dest,
										 quote_identifier(col->name), col->type_sql,
										 col->default_expr && !strstr(col->default_expr, "nextval(") ?
										 " DEFAULT " : "",
										 col->default_expr && !strstr(col->default_expr, "nextval(") ?
										 col->default_expr : ""));
				bunny_log(m->name, "INFO",
						  psprintf("added column %s to %s before copying it again (it was added on the source)",
								   quote_identifier(col->name), dest), NULL);
			}
			copy_columns = lappend(copy_columns, col->name);
		}
		CommandCounterIncrement();
		record_copy_plan(st, m, copy_columns);
		bunny_errcontext_pop(&errctx);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * After update_tables: create what the added tables need on the destination,
 * point the publication at the new table list, and queue the added tables
 * for a copy (resync strategy 'add': they must be empty) that runs while the
 * others stream on.
 */
void
setup_refresh_tables(PGconn *conn, Mirror *m)
{
	List	   *tables = NIL;
	int			added = 0;

	pgstat_report_activity(STATE_RUNNING, "bunnydb: updating the table list");
	(void) source_check(conn);
	tables = source_describe_tables(conn, m, true);

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	added = prepare_destination(conn, m, tables, true, true);
	if (added > 0)
	{
		Oid			types[1] = {INT4OID};
		Datum		vals[1] = {Int32GetDatum(m->id)};

		SPI_connect();
		SPI_execute_with_args("UPDATE bunny.mirror_table "
							  "   SET status = 'SNAPSHOT', resync_state = 'REQUESTED', "
							  "       resync_strategy = 'add', copy_done = false "
							  " WHERE mirror_id = $1 AND status = 'PENDING'",
							  1, types, vals, NULL, false, 0);
		SPI_execute_with_args("UPDATE bunny.mirror SET status = 'RESYNCING', pending_op = 'resync' "
							  " WHERE id = $1", 1, types, vals, NULL, false, 0);
		SPI_finish();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();

	/* the publication changes before the copies take their snapshot */
	source_ensure_publication(conn, m, tables);

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	{
		Oid			types[1] = {INT4OID};
		Datum		vals[1] = {Int32GetDatum(m->id)};

		SPI_connect();
		SPI_execute_with_args("UPDATE bunny.mirror SET publication_dirty = false WHERE id = $1",
							  1, types, vals, NULL, false, 0);
		SPI_finish();
	}
	bunny_log(m->name, "INFO",
			  psprintf("publication %s now has %d table(s); %d to copy", m->publication_name,
					   list_length(tables), added), NULL);
	PopActiveSnapshot();
	CommitTransactionCommand();
	XLogFlush(XactLastCommitEnd);
}

/*
 * Enum labels the source has added since the destination type was created.
 * Logical replication carries no DDL, and ALTER TYPE ... ADD VALUE does not
 * even make pgoutput describe the type again, so the first row with a new
 * label fails on the destination (22P02).  The mirror worker calls this
 * after such a failure, outside any transaction: every enum type used by a
 * column of the mirror's destination tables (directly, as an array or
 * under a domain) gets the labels it lacks, in the source's order, in one
 * transaction that commits before the retry (a label added in a
 * transaction cannot be used in it).  Returns the number of labels added.
 */
int
setup_sync_enum_labels(Mirror *m)
{
	PGconn	   *conn;
	int			added = 0;
	Oid			types[1] = {INT4OID};
	Datum		vals[1] = {Int32GetDatum(m->id)};
	List	   *enums = NIL;
	ListCell   *lc;
	MemoryContext cxt = CurrentMemoryContext;
	MemoryContext work = AllocSetContextCreate(TopMemoryContext, "bunnydb enum labels",
											   ALLOCSET_SMALL_SIZES);

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	SPI_execute_with_args("SELECT DISTINCT n.nspname::text, e.typname::text "
						  "  FROM bunny.mirror_table mt "
						  "  JOIN pg_catalog.pg_attribute a "
						  "    ON a.attrelid = pg_catalog.to_regclass(pg_catalog.format('%I.%I', "
						  "         mt.destination_schema, mt.destination_table)) "
						  "   AND a.attnum > 0 AND NOT a.attisdropped "
						  "  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
						  "  JOIN pg_catalog.pg_type e ON e.oid = CASE "
						  "         WHEN t.typcategory = 'A' THEN t.typelem "
						  "         WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END "
						  "  JOIN pg_catalog.pg_namespace n ON n.oid = e.typnamespace "
						  " WHERE mt.mirror_id = $1 AND e.typtype = 'e'",
						  1, types, vals, NULL, true, 0);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(work);

		enums = lappend(enums, list_make2(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1),
										  SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2)));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	if (enums == NIL)
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(cxt);
		MemoryContextDelete(work);
		return 0;
	}

	conn = mirror_connect(m, false);
	foreach(lc, enums)
	{
		const char *nsp = linitial(lfirst(lc));
		const char *typ = lsecond(lfirst(lc));
		const char *qtyp = qname(nsp, typ);
		List	   *src = source_enum_labels(conn, nsp, typ);
		List	   *have = NIL;
		const char *prev = NULL;
		int			nsrc;
		SPI_connect();
		SPI_execute(psprintf("SELECT enumlabel::text FROM pg_catalog.pg_enum "
							 " WHERE enumtypid = %s::regtype", quote_literal_cstr(qtyp)),
					true, 0);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			MemoryContext old = MemoryContextSwitchTo(work);

			have = lappend(have, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
			MemoryContextSwitchTo(old);
		}
		SPI_finish();

		nsrc = list_length(src);
		for (int i = 0; i < nsrc; i++)
		{
			const char *label = list_nth(src, i);
			bool		present = false;
			ListCell   *hc;
			char	   *ddl;

			foreach(hc, have)
				if (strcmp(lfirst(hc), label) == 0)
					present = true;
			if (present)
			{
				prev = label;
				continue;
			}
			/* after the label before it, or before the first one we have */
			if (prev != NULL)
				ddl = psprintf("ALTER TYPE %s ADD VALUE IF NOT EXISTS %s AFTER %s", qtyp,
							   quote_literal_cstr(label), quote_literal_cstr(prev));
			else
			{
				const char *next = NULL;

				for (int j = i + 1; j < nsrc && next == NULL; j++)
					foreach(hc, have)
						if (strcmp(lfirst(hc), list_nth(src, j)) == 0)
							next = list_nth(src, j);
				ddl = next ?
					psprintf("ALTER TYPE %s ADD VALUE IF NOT EXISTS %s BEFORE %s", qtyp,
							 quote_literal_cstr(label), quote_literal_cstr(next)) :
					psprintf("ALTER TYPE %s ADD VALUE IF NOT EXISTS %s", qtyp,
							 quote_literal_cstr(label));
			}
			bunny_dest_exec(ddl);
			bunny_log(m->name, "INFO",
					  psprintf("added label %s to enum type %s, as on the source",
							   quote_literal_cstr(label), qtyp), NULL);
			have = lappend(have, MemoryContextStrdup(work, label));
			prev = label;
			added++;
		}
	}
	stream_disconnect(&conn);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	MemoryContextDelete(work);
	return added;
}
