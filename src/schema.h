/*-------------------------------------------------------------------------
 *
 * schema.h
 *		The schema model: destination DDL from a source table's description
 *		(source.h), shared by setup, the apply, resync and sync_schema
 *		(schema.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BUNNYDB_SCHEMA_H
#define BUNNYDB_SCHEMA_H

#include "source.h"

/*
 * One statement of a table's later DDL (constraints and indexes after the
 * copy, foreign keys after every copy): kind is "constraint", "index" or
 * "foreign key", as in bunny.mirror_table_ddl; name the object's name on
 * the destination.
 */
typedef struct SchemaDdl
{
	const char *kind;
	char	   *name;
	char	   *sql;
} SchemaDdl;

/*
 * A sequence of a destination table whose value is taken over from the
 * source: dest is NULL for an identity column's, which only exists once
 * the table does (pg_get_serial_sequence finds it).
 */
typedef struct SchemaSequence
{
	char	   *source;
	char	   *dest;
	char	   *column;
} SchemaSequence;

/* what creating a destination table takes, in order */
typedef struct SchemaTable
{
	List	   *statements;		/* of char *: schemas, sequences, the table,
								 * sequence ownership */
	List	   *sequences;		/* of SchemaSequence * */
} SchemaTable;

/* names */
extern void schema_forget_names(void);

/* statements */
extern bool schema_default_copied(const char *default_expr);
extern SchemaTable *schema_create_table_ddl(SourceTable *st, Oid nspid);
extern char *schema_add_column_ddl(const char *dest, SourceColumn *col);
extern char *schema_alter_type_ddl(const char *dest, const char *attname, const char *type_sql);
extern char *schema_set_default_ddl(const char *dest, const char *attname, const char *default_expr);
extern char *schema_not_null_ddl(const char *dest, const char *attname, bool set);
extern char *schema_drop_column_ddl(const char *dest, const char *attname);
extern char *schema_constraint_ddl(const char *dest, SourceConstraint *con);
extern char *schema_index_ddl(const char *src, const char *dest, const char *def);
extern char *schema_primary_key_ddl(const char *src, const char *dest, const char *def);
extern List *schema_post_copy_ddl(SourceTable *st, Oid nspid);
extern List *schema_foreign_key_ddl(SourceTable *st, List *tables, const char *mirror_name);

/* run on the destination */
extern void schema_ensure_type(PGconn *conn, Oid typid, const char *mirror_name, List **done);
extern List *schema_plan_resync(PGconn *conn, SourceTable *st, const char *mirror_name);
extern bool schema_rows_typed(void);
extern void schema_apply_ddl(int32 mirror_id, const char *schema, const char *table,
							 bool foreign_keys, bool indexes);
extern void schema_take_over_sequences(PGconn *conn, const char *mirror_name, int32 mirror_id,
									   const char *schema, const char *table, bool owned_now);
extern int	schema_sync_enum_labels(Mirror *m);

#endif							/* BUNNYDB_SCHEMA_H */
