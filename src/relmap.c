/*-------------------------------------------------------------------------
 *
 * relmap.c
 *		The apply worker's relation map: what it knows of each source
 *		relation the stream describes, the destination table it maps to,
 *		and the prepared statements that apply changes to it.
 *
 * An entry is created by a Relation message (relmap_update; the apply only
 * parses it) and its destination side is built on first use: column
 * mapping (by name), types, receive and input functions, which columns
 * identify a row, whether UPDATEs may be folded.  Columns the source has
 * and the destination lacks are added, defined as setup defines them
 * (schema_add_column_ddl).  Relcache invalidation of the destination table
 * marks the entry for rebuilding; its plans are freed then.  What the map
 * needs from the apply (the mirror, the binary mode, the table a resync
 * replay writes to) it is given, by relmap_init, relmap_set_mirror and
 * relmap_retarget; it never asks the apply's state.  Like the built-in
 * worker's relation.c, but keyed to bunnydb's own catalog:
 * logicalrep_rel_open assumes a subscription.
 *
 *-------------------------------------------------------------------------
 */
#include "apply_internal.h"
#include "schema.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "libpq/pqformat.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/relcache.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

static HTAB *rel_hash = NULL;	/* RelMapEntry by remote relation id */
static HTAB *type_hash = NULL;	/* RemoteType by remote type id */
static MemoryContext RelMapContext = NULL;	/* the map, its plans */

/*
 * What the map serves, given by the apply: the mirror (its tables, and the
 * connections and log lines of schema changes) and whether the stream is
 * in binary mode (the types on both sides must then stay the same).
 */
static Mirror *relmap_mirror = NULL;
static bool relmap_binary = false;

/*
 * The mirror's tables by source schema and name, for the Relation messages
 * to find theirs: a search of the list per message made the first pass of
 * a 10 000-table mirror quadratic.  Names fit: they are the source's.
 */
typedef struct SourceTableKey
{
	NameData	nspname;
	NameData	relname;
} SourceTableKey;

typedef struct SourceTableEntry
{
	SourceTableKey key;
	MirrorTable *mt;
} SourceTableEntry;

static HTAB *source_tables = NULL;

static void
index_mirror_tables(Mirror *m)
{
	HASHCTL		ctl;
	ListCell   *lc;

	if (source_tables != NULL)
		hash_destroy(source_tables);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(SourceTableKey);
	ctl.entrysize = sizeof(SourceTableEntry);
	ctl.hcxt = RelMapContext;
	source_tables = hash_create("bunnydb mirror tables", Max(list_length(m->tables), 16), &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	foreach(lc, m->tables)
	{
		MirrorTable *mt = lfirst(lc);
		SourceTableKey key;
		SourceTableEntry *e;
		bool		found;

		memset(&key, 0, sizeof(key));
		namestrcpy(&key.nspname, mt->source_schema);
		namestrcpy(&key.relname, mt->source_table);
		e = hash_search(source_tables, &key, HASH_ENTER, &found);
		if (!found)
			e->mt = mt;
	}
}

/* create the map and the cache context, once per apply_stream() */
void
relmap_init(Mirror *m, bool binary)
{
	HASHCTL		ctl;
	static bool callback_registered = false;

	RelMapContext = AllocSetContextCreate(TopMemoryContext, "bunnydb apply cache",
											  ALLOCSET_DEFAULT_SIZES);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(LogicalRepRelId);
	ctl.entrysize = sizeof(RelMapEntry);
	ctl.hcxt = RelMapContext;
	rel_hash = hash_create("bunnydb relation map", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(RemoteType);
	type_hash = hash_create("bunnydb type map", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	relmap_mirror = m;
	relmap_binary = binary;
	index_mirror_tables(m);
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(relmap_invalidate, (Datum) 0);
		callback_registered = true;
	}
}

/*
 * A Relation message: (re)describe the source relation, mapped to mt (NULL:
 * not mapped); raw is the message as received, for resync replays.  The
 * destination side is rebuilt on the next use of the entry.
 */
void
relmap_update(LogicalRepRelation *rel, int32 *typmods, MirrorTable *mt,
			  const char *raw, int rawlen)
{
	RelMapEntry *e;
	bool		found;
	MemoryContext old;

	e = hash_search(rel_hash, &rel->remoteid, HASH_ENTER, &found);
	if (found)
		relmap_free_plans(e);
	else
		memset(((char *) e) + sizeof(LogicalRepRelId), 0,
			   sizeof(RelMapEntry) - sizeof(LogicalRepRelId));

	/* everything of the entry lives in the cache context */
	old = MemoryContextSwitchTo(RelMapContext);
	e->remoterel = palloc0(sizeof(LogicalRepRelation));
	e->remoterel->remoteid = rel->remoteid;
	e->remoterel->nspname = pstrdup(rel->nspname);
	e->remoterel->relname = pstrdup(rel->relname);
	e->remoterel->attnames = palloc(sizeof(char *) * (rel->natts + 1));
	e->remoterel->atttyps = palloc(sizeof(Oid) * (rel->natts + 1));
	e->remote_typmods = palloc(sizeof(int32) * (rel->natts + 1));
	e->remoterel->attkeys = NULL;
	e->remote_skip = NULL;
	e->remote_natts_sent = rel->natts;

	/*
	 * A source without publication column lists (before 15) sends the
	 * excluded columns too: they are left out here, so that everything
	 * after this sees the columns a column list would have sent.
	 */
	if (mt != NULL && mt->exclude_columns != NIL)
	{
		for (int i = 0; i < rel->natts; i++)
		{
			ListCell   *lc;

			foreach(lc, mt->exclude_columns)
				if (strcmp((char *) lfirst(lc), rel->attnames[i]) == 0)
				{
					if (e->remote_skip == NULL)
						e->remote_skip = palloc0(sizeof(bool) * rel->natts);
					e->remote_skip[i] = true;
				}
		}
	}
	{
		int			k = 0;

		for (int i = 0; i < rel->natts; i++)
		{
			if (e->remote_skip && e->remote_skip[i])
				continue;
			e->remoterel->attnames[k] = pstrdup(rel->attnames[i]);
			e->remoterel->atttyps[k] = rel->atttyps[i];
			e->remote_typmods[k] = typmods[i];
			if (bms_is_member(i, rel->attkeys))
				e->remoterel->attkeys = bms_add_member(e->remoterel->attkeys, k);
			k++;
		}
		e->remoterel->natts = k;
	}
	e->remoterel->replident = rel->replident;
	e->mt = mt;
	e->qualname = mt ? pstrdup(quote_qualified_identifier(mt->dest_schema, mt->dest_table)) : NULL;
	if (raw != NULL)
	{
		e->raw_relmsg = palloc(rawlen);
		memcpy(e->raw_relmsg, raw, rawlen);
		e->raw_relmsg_len = rawlen;
	}
	MemoryContextSwitchTo(old);
	e->valid = false;

}

/* a Type message: remember the name of a source user-defined type */
void
relmap_update_type(LogicalRepTyp *typ)
{
	RemoteType *t;
	bool		found;

	t = hash_search(type_hash, &typ->remoteid, HASH_ENTER, &found);
	t->nspname = MemoryContextStrdup(RelMapContext, typ->nspname);
	t->typname = MemoryContextStrdup(RelMapContext, typ->typname);
}

/* start a scan of every entry (hash_seq_search returns them) */
void
relmap_seq_init(HASH_SEQ_STATUS *status)
{
	hash_seq_init(status, rel_hash);
}

/* the long-lived memory context of the apply: the map's, until it ends */
MemoryContext
relmap_context(void)
{
	return RelMapContext;
}

/* the mirror's table for a source schema.table, or NULL */
MirrorTable *
relmap_mirror_table(const char *nsp, const char *rel)
{
	SourceTableKey key;
	SourceTableEntry *e;

	memset(&key, 0, sizeof(key));
	namestrcpy(&key.nspname, nsp);
	namestrcpy(&key.relname, rel);
	e = hash_search(source_tables, &key, HASH_FIND, NULL);
	return e ? e->mt : NULL;
}

/*
 * A reloaded mirror: entries point at its tables from now on (the old
 * tables go with the old load).
 */
void
relmap_set_mirror(Mirror *m)
{
	HASH_SEQ_STATUS status;
	RelMapEntry *e;

	relmap_mirror = m;
	if (rel_hash == NULL)
		return;
	index_mirror_tables(m);
	hash_seq_init(&status, rel_hash);
	while ((e = hash_seq_search(&status)) != NULL)
		e->mt = relmap_mirror_table(e->remoterel->nspname, e->remoterel->relname);
}

/*
 * Write the changes of mt into table (the copy of a swap while its resync
 * queue is replayed) instead of the mapped table; NULL goes back to it.
 * The entries are rebuilt on their next use.
 */
void
relmap_retarget(MirrorTable *mt, const char *table)
{
	HASH_SEQ_STATUS status;
	RelMapEntry *e;

	if (rel_hash == NULL)
		return;
	hash_seq_init(&status, rel_hash);
	while ((e = hash_seq_search(&status)) != NULL)
		if (e->mt == mt)
		{
			e->target_table = table;
			e->valid = false;
		}
}

/* lappend into a given memory context */
List *
apply_list_append_in(MemoryContext cxt, List *list, void *datum)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);

	list = lappend(list, datum);
	MemoryContextSwitchTo(old);
	return list;
}

/* throw away the destination side of entries whose table changed */
void
relmap_invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	RelMapEntry *e;

	if (rel_hash == NULL)
		return;
	hash_seq_init(&status, rel_hash);
	while ((e = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || e->localrelid == relid)
			e->valid = false;
}

/* drop the prepared statements of an entry */
void
relmap_free_plans(RelMapEntry *e)
{
	ListCell   *lc;

	foreach(lc, e->plans)
	{
		ApplyPlan  *p = lfirst(lc);

		SPI_freeplan(p->plan);
	}
	e->plans = NIL;
}

/* SQL for the type of a remote column, to add it on the destination */
static char *
remote_type_sql(RelMapEntry *e, int i)
{
	Oid			typid = e->remoterel->atttyps[i];
	RemoteType *t;

	if (typid < FirstNormalObjectId)
		return format_type_with_typemod(typid, e->remote_typmods[i]);
	t = hash_search(type_hash, &typid, HASH_FIND, NULL);
	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown source type %u of column \"%s\"", typid,
						e->remoterel->attnames[i])));
	return psprintf("%s", quote_qualified_identifier(t->nspname, t->typname));
}

/*
 * Column i of e as the source describes it now (source_table_columns, as
 * setup describes columns: type with COLLATE, default, identity), to add
 * it here with the definition setup would give it.  A column added with a
 * default fills the existing rows on the source without any WAL record per
 * row, so the destination column needs the same default to agree.  A
 * user-defined type the column needs is created first, as setup creates
 * it.  When the source no longer has the column, the Relation message's
 * type is all there is.  Asked on a short-lived plain connection: the
 * replication connection is busy streaming.
 */
static SourceColumn *
remote_column(RelMapEntry *e, int i)
{
	const char *attname = e->remoterel->attnames[i];
	PGconn	   *c;
	SourceColumn *found = NULL;
	List	   *types_done = NIL;
	ListCell   *lc;

	/* no PG_TRY: on error the worker exits, which closes c */
	c = mirror_connect(relmap_mirror, false);
	foreach(lc, source_table_columns(c, quote_qualified_identifier(e->remoterel->nspname,
																   e->remoterel->relname)))
	{
		SourceColumn *col = lfirst(lc);

		if (strcmp(col->name, attname) == 0)
			found = col;
	}
	if (found != NULL)
		schema_ensure_type(c, found->typid, relmap_mirror->name, &types_done);
	stream_disconnect(&c);
	if (found == NULL)
	{
		found = palloc0(sizeof(SourceColumn));
		found->name = pstrdup(attname);
		found->type_sql = remote_type_sql(e, i);
	}
	return found;
}

/*
 * Build the destination side of an entry: local columns (adding the ones
 * the source gained), input functions, and how rows are identified.
 */
static void
relmap_build(RelMapEntry *e)
{
	LogicalRepRelation *r = e->remoterel;
	Oid			nspid;
	Relation	rel;
	int			n = r->natts;
	MemoryContext old;
	Oid			pkoid;
	List	   *pkcols = NIL;
	BunnyErrorContext errctx;

	{
		const char *table = e->target_table ? e->target_table : e->mt->dest_table;

		e->qualname = MemoryContextStrdup(RelMapContext,
										  quote_qualified_identifier(e->mt->dest_schema, table));
		bunny_errcontext_push(&errctx, NULL, e->qualname, InvalidXLogRecPtr);
		nspid = get_namespace_oid(e->mt->dest_schema, true);
		e->localrelid = OidIsValid(nspid) ? get_relname_relid(table, nspid) : InvalidOid;
	}
	if (!OidIsValid(e->localrelid))
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("destination table %s does not exist", e->qualname),
				 errhint("Recreate the table, then call bunny.retry_mirror().")));
	}

	/* columns the source has and we do not: add them */
	for (int i = 0; i < n; i++)
	{
		if (get_attnum(e->localrelid, r->attnames[i]) != InvalidAttrNumber)
			continue;
		{
			char	   *ddl = schema_add_column_ddl(e->qualname, remote_column(e, i));
			int			rc;

			SPI_connect();
			rc = SPI_execute(ddl, false, 0);
			SPI_finish();
			if (rc < 0)
				ereport(ERROR,
						(errcode(ERRCODE_INTERNAL_ERROR),
						 errmsg("could not add column \"%s\" to %s", r->attnames[i], e->qualname)));
			CommandCounterIncrement();
			bunny_log(relmap_mirror->name, "INFO",
					  psprintf("added column %s to %s (it was added on the source)",
							   quote_identifier(r->attnames[i]), e->qualname),
					  NULL);
		}
	}

	/*
	 * A NOT NULL column without a default of a table bunnydb made, that the
	 * source no longer sends (dropped there), would fail every INSERT until
	 * sync_schema drops it: it is made nullable now.  A table the user made
	 * is left as it is.
	 */
	if (e->mt->created_by_bunny)
	{
		Relation	rel = table_open(e->localrelid, AccessShareLock);
		TupleDesc	desc = RelationGetDescr(rel);
		List	   *relax = NIL;
		ListCell   *lc;

		for (int a = 0; a < desc->natts; a++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, a);
			bool		sent = false;

			if (att->attisdropped || !att->attnotnull || att->atthasdef ||
				att->attgenerated != '\0' || att->attidentity != '\0')
				continue;
			for (int i = 0; i < n && !sent; i++)
				sent = strcmp(NameStr(att->attname), r->attnames[i]) == 0;
			if (!sent)
				relax = lappend(relax, pstrdup(NameStr(att->attname)));
		}
		table_close(rel, AccessShareLock);
		foreach(lc, relax)
		{
			char	   *col = lfirst(lc);

			SPI_connect();
			if (SPI_execute(psprintf("ALTER TABLE %s ALTER COLUMN %s DROP NOT NULL",
									 e->qualname, quote_identifier(col)), false, 0) < 0)
				ereport(ERROR,
						(errcode(ERRCODE_INTERNAL_ERROR),
						 errmsg("could not drop NOT NULL of column \"%s\" of %s", col, e->qualname)));
			SPI_finish();
			CommandCounterIncrement();
			bunny_log(relmap_mirror->name, "INFO",
					  psprintf("column %s of %s is nullable now: the source no longer sends it "
							   "(bunny.sync_schema() drops it)", quote_identifier(col), e->qualname),
					  NULL);
		}
	}

	relmap_free_plans(e);
	old = MemoryContextSwitchTo(RelMapContext);
	e->attmap = palloc0(sizeof(AttrNumber) * (n + 1));
	e->typid = palloc0(sizeof(Oid) * (n + 1));
	e->typmod = palloc0(sizeof(int32) * (n + 1));
	e->typlen = palloc0(sizeof(int16) * (n + 1));
	e->typbyval = palloc0(sizeof(bool) * (n + 1));
	e->infunc = palloc0(sizeof(FmgrInfo) * (n + 1));
	e->inioparam = palloc0(sizeof(Oid) * (n + 1));
	e->recvfunc = palloc0(sizeof(FmgrInfo) * (n + 1));
	e->recvioparam = palloc0(sizeof(Oid) * (n + 1));
	e->recv_ready = palloc0(sizeof(bool) * (n + 1));
	e->colsql = palloc0(sizeof(char *) * (n + 1));
	e->iskey = palloc0(sizeof(bool) * (n + 1));
	e->text_eq = palloc0(sizeof(bool) * (n + 1));
	MemoryContextSwitchTo(old);

	rel = table_open(e->localrelid, AccessShareLock);
	for (int i = 0; i < n; i++)
	{
		AttrNumber	attnum = get_attnum(e->localrelid, r->attnames[i]);
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
		Oid			infuncoid;

		e->attmap[i] = attnum;
		e->typid[i] = att->atttypid;
		e->typmod[i] = att->atttypmod;
		e->typlen[i] = att->attlen;
		e->typbyval[i] = att->attbyval;
		getTypeInputInfo(att->atttypid, &infuncoid, &e->inioparam[i]);
		fmgr_info_cxt(infuncoid, &e->infunc[i], RelMapContext);
		e->colsql[i] = MemoryContextStrdup(RelMapContext, quote_identifier(r->attnames[i]));

		if (relmap_binary && (r->atttyps[i] >= FirstNormalObjectId || r->atttyps[i] != att->atttypid))
		{
			/*
			 * The binary decision reads the source's catalog as it is now;
			 * changes still in the stream can carry a column it no longer
			 * has (dropped since, with a type binary cannot carry).  The
			 * next run streams in text until everything the source had
			 * written by now is applied, or it would decide on binary
			 * again and fail here for ever.
			 */
			workerslot_text_until_source_lsn();
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" of %s no longer has the same built-in type on both sides",
							r->attnames[i], e->qualname),
					 errdetail("The stream is in binary mode; the worker reconnects in text mode.")));
		}
	}

	/* how rows are identified */
	e->full_match = false;
	if (r->replident == REPLICA_IDENTITY_FULL)
	{
		pkoid = RelationGetPrimaryKeyIndex(rel);
		if (OidIsValid(pkoid))
		{
			Relation	idx = index_open(pkoid, AccessShareLock);

			for (int k = 0; k < idx->rd_index->indnkeyatts; k++)
				pkcols = lappend_int(pkcols, idx->rd_index->indkey.values[k]);
			index_close(idx, AccessShareLock);
			for (int i = 0; i < n; i++)
				if (list_member_int(pkcols, e->attmap[i]))
					e->iskey[i] = true;
			/* the destination key must be entirely among the columns we get */
			{
				int			found = 0;

				for (int i = 0; i < n; i++)
					found += e->iskey[i] ? 1 : 0;
				if (found != list_length(pkcols))
					pkoid = InvalidOid;
			}
		}
		if (!OidIsValid(pkoid))
		{
			e->full_match = true;
			for (int i = 0; i < n; i++)
			{
				TypeCacheEntry *tc = lookup_type_cache(e->typid[i], TYPECACHE_EQ_OPR);

				e->iskey[i] = true;
				e->text_eq[i] = !OidIsValid(tc->eq_opr);
			}
		}
	}
	else
	{
		for (int i = 0; i < n; i++)
			e->iskey[i] = bms_is_member(i, r->attkeys);
	}
	e->fold_checked = false;	/* fold.c looks when an UPDATE comes */
	table_close(rel, AccessShareLock);
	e->valid = true;
	bunny_errcontext_pop(&errctx);
}

/*
 * Leave out of a tuple the excluded columns a source without publication
 * column lists (before 15) sent, in place, so that it matches the entry's
 * remote relation (see apply_handle_relation).  e may be NULL (a table not
 * mapped any more).
 */
void
relmap_strip_excluded(RelMapEntry *e, LogicalRepTupleData *tup)
{
	int			k = 0;

	if (e == NULL || e->remote_skip == NULL)
		return;
	if (tup->ncols != e->remote_natts_sent)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("a change of %s has %d columns, its Relation message %d",
						e->qualname, tup->ncols, e->remote_natts_sent)));
	for (int i = 0; i < tup->ncols; i++)
	{
		if (e->remote_skip[i])
			continue;
		tup->colvalues[k] = tup->colvalues[i];
		tup->colstatus[k] = tup->colstatus[i];
		k++;
	}
	tup->ncols = k;
}

/* the entry for a remote relation id, built for use; NULL if not mapped */
RelMapEntry *
relmap_get(LogicalRepRelId remoteid)
{
	RelMapEntry *e = hash_search(rel_hash, &remoteid, HASH_FIND, NULL);

	if (e == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("change for unknown source relation %u", remoteid)));
	/*
	 * Not mapped: a table update_tables removed.  The stream still carries
	 * its changes from before the publication was changed; they are not
	 * ours any more.
	 */
	if (e->mt == NULL)
		return NULL;
	if (!e->valid)
		relmap_build(e);
	return e;
}

/*
 * Convert a decoded tuple into parameter values; present[i] is '1' for
 * columns that carry a value (or NULL) and '0' for unchanged TOAST.
 */
void
relmap_tuple_to_datums(RelMapEntry *e, LogicalRepTupleData *tup, Datum *values,
					   char *nulls, char *present)
{
	int			n = e->remoterel->natts;

	if (tup->ncols != n)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("tuple has %d columns, the relation message announced %d",
						tup->ncols, n)));
	for (int i = 0; i < n; i++)
	{
		StringInfo	v = &tup->colvalues[i];

		nulls[i] = ' ';
		present[i] = '1';
		values[i] = (Datum) 0;
		switch (tup->colstatus[i])
		{
			case LOGICALREP_COLUMN_NULL:
				nulls[i] = 'n';
				break;
			case LOGICALREP_COLUMN_UNCHANGED:
				present[i] = '0';
				break;
			case LOGICALREP_COLUMN_TEXT:
				values[i] = InputFunctionCall(&e->infunc[i], v->data, e->inioparam[i], e->typmod[i]);
				break;
			case LOGICALREP_COLUMN_BINARY:
				if (!e->recv_ready[i])
				{
					Oid			recvoid;

					getTypeBinaryInputInfo(e->typid[i], &recvoid, &e->recvioparam[i]);
					fmgr_info_cxt(recvoid, &e->recvfunc[i], RelMapContext);
					(void) fastrecv_install(&e->recvfunc[i]);
					e->recv_ready[i] = true;
				}
				/* a tuple can be converted twice (new values, then key) */
				v->cursor = 0;
				values[i] = ReceiveFunctionCall(&e->recvfunc[i], v, e->recvioparam[i], e->typmod[i]);
				if (v->cursor != v->len)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
							 errmsg("incorrect binary data format in column \"%s\"",
									e->remoterel->attnames[i])));
				break;
			default:
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("unknown column status '%c'", tup->colstatus[i])));
		}
	}
}

/* the WHERE clause identifying one row; params numbered from first_param */
static void
append_where(StringInfo sql, RelMapEntry *e, const char *wheremask, int first_param,
			 Oid *argtypes, int *nargs)
{
	int			n = e->remoterel->natts;
	int			p = first_param;
	bool		first = true;
	StringInfoData cond;

	initStringInfo(&cond);
	for (int i = 0; i < n; i++)
	{
		if (wheremask[i] != '1')
			continue;
		if (!first)
			appendStringInfoString(&cond, " AND ");
		if (!e->full_match)
			appendStringInfo(&cond, "%s = $%d", e->colsql[i], p);
		else if (e->text_eq[i])
			appendStringInfo(&cond, "%s::text IS NOT DISTINCT FROM $%d::text", e->colsql[i], p);
		else
			appendStringInfo(&cond, "%s IS NOT DISTINCT FROM $%d", e->colsql[i], p);
		argtypes[(*nargs)++] = e->typid[i];
		p++;
		first = false;
	}
	if (first)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("no column identifies the row in %s", e->qualname)));
	if (e->full_match)
		appendStringInfo(sql, " WHERE ctid = (SELECT ctid FROM %s WHERE %s LIMIT 1)",
						 e->qualname, cond.data);
	else
		appendStringInfo(sql, " WHERE %s", cond.data);
}

/* attidentity of the destination column of remote column i */
static char
column_identity(RelMapEntry *e, int i)
{
	HeapTuple	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(e->localrelid),
									  Int16GetDatum(e->attmap[i]));
	char		result = '\0';

	if (HeapTupleIsValid(tup))
	{
		result = ((Form_pg_attribute) GETSTRUCT(tup))->attidentity;
		ReleaseSysCache(tup);
	}
	return result;
}

/*
 * The prepared statement for a change of the given kind and shape:
 * setmask marks columns written (I, U; 'k' for a key column an UPDATE
 * leaves as it was), wheremask the columns that identify the row (U, D,
 * and E, which only looks for the row).
 */
SPIPlanPtr
relmap_get_plan(RelMapEntry *e, char kind, const char *setmask, const char *wheremask, int nrows)
{
	int			n = e->remoterel->natts;
	char	   *key = psprintf("%c%d:%s|%s", kind, nrows, setmask ? setmask : "",
							   wheremask ? wheremask : "");
	ListCell   *lc;
	StringInfoData sql;
	Oid		   *argtypes = palloc(sizeof(Oid) * (Max(2, nrows) * n + 1));
	int			nargs = 0;
	SPIPlanPtr	plan;
	ApplyPlan  *ap;
	bool		first = true;

	foreach(lc, e->plans)
	{
		ap = lfirst(lc);
		if (strcmp(ap->key, key) == 0)
			return ap->plan;
	}

	initStringInfo(&sql);
	if (kind == 'I')
	{
		bool		overriding = false;

		appendStringInfo(&sql, "INSERT INTO %s (", e->qualname);
		for (int i = 0; i < n; i++)
		{
			if (setmask[i] != '1')
				continue;
			appendStringInfo(&sql, "%s%s", first ? "" : ", ", e->colsql[i]);
			first = false;
			if (column_identity(e, i) == ATTRIBUTE_IDENTITY_ALWAYS)
				overriding = true;
		}
		/* the source's values, as PostgreSQL's own apply writes them */
		appendStringInfo(&sql, ")%s VALUES ", overriding ? " OVERRIDING SYSTEM VALUE" : "");
		/* nrows rows in one statement: one executor start for many rows */
		for (int r = 0; r < nrows; r++)
		{
			first = true;
			appendStringInfo(&sql, "%s(", r ? ", " : "");
			for (int i = 0; i < n; i++)
			{
				if (setmask[i] != '1')
					continue;
				argtypes[nargs++] = e->typid[i];
				appendStringInfo(&sql, "%s$%d", first ? "" : ", ", nargs);
				first = false;
			}
			appendStringInfoChar(&sql, ')');
		}
	}
	else if (kind == 'U')
	{
		appendStringInfo(&sql, "UPDATE %s SET ", e->qualname);
		for (int i = 0; i < n; i++)
		{
			if (setmask[i] == '0')
				continue;
			argtypes[nargs++] = e->typid[i];

			/*
			 * UPDATE may not assign an identity column GENERATED ALWAYS, not
			 * even its own value (PostgreSQL's apply writes tuples without
			 * that check).  A key column that keeps its value ('k') is held
			 * by the WHERE clause anyway: its parameter goes unused.
			 */
			if (setmask[i] == 'k' && column_identity(e, i) == ATTRIBUTE_IDENTITY_ALWAYS)
				continue;
			appendStringInfo(&sql, "%s%s = $%d", first ? "" : ", ", e->colsql[i], nargs);
			first = false;
		}
		/* nothing else to set: the row still has to be there */
		if (first)
		{
			resetStringInfo(&sql);
			appendStringInfo(&sql, "SELECT 1 FROM %s", e->qualname);
		}
		append_where(&sql, e, wheremask, nargs + 1, argtypes, &nargs);
	}
	else if (kind == 'F')
	{
		/*
		 * Folded UPDATEs of nrows distinct keys in one statement: each row of
		 * the VALUES list carries the key (wheremask) and the new values
		 * (setmask) of one row, in column order.
		 */
		StringInfoData alias;
		StringInfoData cond;

		initStringInfo(&alias);
		initStringInfo(&cond);
		appendStringInfo(&sql, "UPDATE %s AS bunny_t SET ", e->qualname);
		for (int i = 0; i < n; i++)
		{
			if (setmask[i] == '1' || wheremask[i] == '1')
				appendStringInfo(&alias, "%sc%d", alias.len ? ", " : "", i);
			if (wheremask[i] == '1')
				appendStringInfo(&cond, "%sbunny_t.%s = bunny_v.c%d",
								 cond.len ? " AND " : "", e->colsql[i], i);
			else if (setmask[i] == '1')
			{
				appendStringInfo(&sql, "%s%s = bunny_v.c%d", first ? "" : ", ", e->colsql[i], i);
				first = false;
			}
		}
		appendStringInfoString(&sql, " FROM (VALUES ");
		for (int r = 0; r < nrows; r++)
		{
			bool		firstcol = true;

			appendStringInfo(&sql, "%s(", r ? ", " : "");
			for (int i = 0; i < n; i++)
			{
				if (setmask[i] != '1' && wheremask[i] != '1')
					continue;
				argtypes[nargs++] = e->typid[i];
				appendStringInfo(&sql, "%s$%d", firstcol ? "" : ", ", nargs);
				firstcol = false;
			}
			appendStringInfoChar(&sql, ')');
		}
		appendStringInfo(&sql, ") AS bunny_v (%s) WHERE %s", alias.data, cond.data);
	}
	else if (kind == 'E')
	{
		/* is the row there (asked when an UPDATE or DELETE touched none) */
		appendStringInfo(&sql, "SELECT 1 FROM %s", e->qualname);
		append_where(&sql, e, wheremask, 1, argtypes, &nargs);
		appendStringInfoString(&sql, " LIMIT 1");
	}
	else
	{
		appendStringInfo(&sql, "DELETE FROM %s", e->qualname);
		append_where(&sql, e, wheremask, 1, argtypes, &nargs);
	}

	/*
	 * Always the generic plan: the statement runs again and again with new
	 * values for the same index scans, and a custom plan (the plan cache's
	 * choice for the first five runs, and for good when the generic plan's
	 * estimate looks worse) would plan a 100-row statement every time.
	 */
	SPI_connect();
	plan = SPI_prepare_cursor(sql.data, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
	if (plan == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not prepare \"%s\": %s", sql.data,
						SPI_result_code_string(SPI_result))));
	SPI_keepplan(plan);
	SPI_finish();

	ap = MemoryContextAlloc(RelMapContext, sizeof(ApplyPlan));
	ap->key = MemoryContextStrdup(RelMapContext, key);
	ap->plan = plan;
	e->plans = apply_list_append_in(RelMapContext, e->plans, ap);
	return plan;
}

/* the relation map entry of a mapped table, or NULL */
RelMapEntry *
relmap_find_table(MirrorTable *mt)
{
	HASH_SEQ_STATUS status;
	RelMapEntry *e;
	RelMapEntry *found = NULL;

	if (rel_hash == NULL)
		return NULL;
	hash_seq_init(&status, rel_hash);
	while ((e = hash_seq_search(&status)) != NULL)
		if (e->mt != NULL && strcmp(e->mt->source_schema, mt->source_schema) == 0 &&
			strcmp(e->mt->source_table, mt->source_table) == 0)
			found = e;
	return found;
}

