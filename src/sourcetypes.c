/*-------------------------------------------------------------------------
 *
 * sourcetypes.c
 *		What the source's user-defined types are, for the schema model to
 *		create them on the destination (schema_ensure_type) and to take
 *		over enum labels the source added later.
 *
 * Part of the source module (source.h): the same rules as source.c, every
 * question asked once, in one function, with parameters.
 *
 * Functions:
 *		source_describe_type		a user-defined type (SourceType)
 *		source_enum_labels			an enum's labels in order
 *		source_domain_checks		a domain's CHECK constraints
 *		source_type_attributes		a composite type's attributes
 *
 *-------------------------------------------------------------------------
 */
#include "source.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"

/* a type of the source by OID, or NULL when it is gone */
SourceType *
source_describe_type(PGconn *conn, Oid typid)
{
	PGresult   *res;
	SourceType *t;
	const char *params[1] = {source_oid_text(typid)};

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
	const char *params[1] = {source_oid_text(typid)};

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
	const char *params[1] = {source_oid_text(typrelid)};

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
