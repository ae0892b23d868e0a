/*-------------------------------------------------------------------------
 *
 * source.h
 *		Every question bunnydb asks of the source database, and the typed
 *		answers (source.c, sourcedesc.c, sourcetypes.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BUNNYDB_SOURCE_H
#define BUNNYDB_SOURCE_H

#include "bunnydb.h"

/*
 * What one connection's server is and can do, asked once per connection
 * (source_info).  The capabilities follow from the version; they are named
 * so that a caller says which feature it needs rather than comparing
 * version numbers.
 */
typedef struct SourceInfo
{
	int			version;		/* server_version_num, e.g. 150004 */
	char	   *version_text;	/* server_version, e.g. "15.4" */
	char	   *wal_level;
	bool		can_replicate;	/* the role has REPLICATION or SUPERUSER */
	bool		replication_conn;	/* a walsender (replication=database):
									 * simple query protocol only */
	bool		publish_partitioned;	/* 13: partitioned tables in a
										 * publication, publish_via_partition_root */
	bool		binary;			/* 14: pgoutput's binary option */
	bool		streaming;		/* 14: protocol version 2, in-progress
								 * transactions */
	bool		column_lists;	/* 15: publication column lists */
} SourceInfo;

/* a column of a source table */
typedef struct SourceColumn
{
	char	   *name;
	char	   *type_sql;		/* format_type(), schema-qualified, with
								 * COLLATE when not the type's own */
	bool		notnull;
	Oid			typid;
	char	   *generated;		/* expression of a generated column, or NULL */
	char	   *default_expr;	/* default, or NULL */
	char		identity;		/* attidentity: '', 'a' or 'd' */
	char	   *serial_seq;		/* owned sequence (serial/identity), qualified */
	char	   *default_seq_schema; /* schema and name of a sequence that */
	char	   *default_seq_name;	/* the default uses and no column owns */
	char	   *seq_options;	/* CREATE SEQUENCE options (without AS) */
	char	   *seq_type;		/* and data type of either sequence */
	int			key_position;	/* 1.. in the primary key, 0 when not in it */
	bool		excluded;		/* named in the mapping's exclude_columns */
} SourceColumn;

/*
 * A constraint of a source table (primary key, unique, check, exclusion,
 * foreign key), as pg_get_constraintdef() prints it.
 */
typedef struct SourceConstraint
{
	char	   *name;
	char		contype;		/* p, u, c, x or f */
	char	   *def;
	char	   *ref_schema;		/* a foreign key's referenced table */
	char	   *ref_table;
	bool		uses_excluded;	/* one of its columns is excluded */
} SourceConstraint;

/* an index of a source table */
typedef struct SourceIndex
{
	char	   *name;
	char	   *def;			/* pg_get_indexdef() */
	bool		isprimary;
	bool		constraint_owned;	/* a constraint's (primary key, unique,
									 * exclusion) */
	List	   *columns;		/* of char *: the columns it covers */
	char	   *columns_text;	/* the same as the source's text[] */
	bool		uses_excluded;	/* one of them is excluded (setup sets it) */
} SourceIndex;

/* a mapped source table, as source_describe_table found it */
typedef struct SourceTable
{
	MirrorTable *mt;
	Oid			relid;
	char		relkind;
	int64		relpages;
	int64		reltuples;
	List	   *columns;		/* of SourceColumn * */
	List	   *pk_columns;		/* of char *, in key order */
	List	   *leaves;			/* leaf partitions (qualified), for relkind 'p' */
	bool		key_ranges;		/* partition_key is an integer with known bounds */
	int64		key_min;
	int64		key_max;
	List	   *constraints;	/* of SourceConstraint *, primary key first */
	List	   *indexes;		/* of SourceIndex *, those no constraint owns */
} SourceTable;

/* a user-defined type of the source */
typedef struct SourceType
{
	Oid			typid;
	char		typtype;		/* e(num), d(omain), c(omposite), ... */
	char		typcategory;
	char	   *nspname;
	char	   *typname;
	Oid			elem;			/* an array's element type */
	Oid			basetype;		/* a domain's base type */
	char	   *basetype_sql;
	bool		notnull;
	char	   *typdefault;
	Oid			typrelid;		/* a composite's relation */
	char	   *extname;		/* extension the type belongs to, or NULL */
} SourceType;

/* the type of a replicated column of a source table */
typedef struct SourceColumnType
{
	char	   *schema;
	char	   *table;
	char	   *column;
	Oid			typid;
} SourceColumnType;

/* a table of the source, as bunny.peer_tables lists it */
typedef struct SourceTableSummary
{
	char	   *schema;
	char	   *table;
	bool		has_primary_key;
	char	   *replica_identity;	/* default, full, index or nothing */
	int64		estimated_rows;
} SourceTableSummary;

/* a named SQL snippet: a domain's CHECK, a composite's attribute */
typedef struct SourceNamedDef
{
	char	   *name;
	char	   *def;			/* constraint definition, or type */
	Oid			typid;			/* an attribute's type */
} SourceNamedDef;

/* connection and capabilities */
extern PGresult *source_query(PGconn *conn, const char *sql, int nparams,
							  const char *const *params, ExecStatusType expected);
extern SourceInfo *source_info(PGconn *conn);
extern PGconn *source_connect_as_caller(const char *conninfo);

/* checks */
extern SourceInfo *source_check(PGconn *conn);
extern char *source_problems(SourceInfo *info);

/* helpers for the source module's files (source.c) */
extern const char *source_qname(const char *schema, const char *name);
extern char *source_text_array(List *items);
extern char *source_oid_text(Oid oid);

/* tables (sourcedesc.c) */
extern SourceTable *source_describe_table(PGconn *conn, MirrorTable *mt, bool plan);
extern List *source_describe_tables(PGconn *conn, Mirror *m, bool plan);
extern List *source_table_columns(PGconn *conn, const char *qualified_table);
extern List *source_table_indexes(PGconn *conn, const char *qualified_table);
extern List *source_list_tables(PGconn *conn);
extern List *source_column_types(PGconn *conn, List *schemas, List *tables);

/* user-defined types (sourcetypes.c) */
extern SourceType *source_describe_type(PGconn *conn, Oid typid);
extern List *source_enum_labels(PGconn *conn, const char *nspname, const char *typname);
extern List *source_domain_checks(PGconn *conn, Oid typid);
extern List *source_type_attributes(PGconn *conn, Oid typrelid);

/* publication and slot */
extern bool source_publication_exists(PGconn *conn, const char *pubname, char **comment);
extern void source_ensure_publication(PGconn *conn, Mirror *m, List *tables);
extern void source_drop_publication(PGconn *conn, const char *pubname);
extern bool source_slot_exists(PGconn *conn, const char *slot, char **active_pid,
							   XLogRecPtr *confirmed_flush);
extern void source_drop_slot(PGconn *conn, const char *slot, int timeout_ms);
extern bool source_terminate_backend(PGconn *conn, const char *pid);

/* positions and values */
extern XLogRecPtr source_current_wal_lsn(PGconn *conn);
extern void source_sequence_value(PGconn *conn, const char *qualified_seq,
								  char **last_value, bool *is_called);
extern void source_import_snapshot(PGconn *conn, const char *snapshot_name);
extern void source_copy_out(PGconn *conn, List *columns, const char *from,
							const char *where, bool binary);

#endif							/* BUNNYDB_SOURCE_H */
