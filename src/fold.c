/*-------------------------------------------------------------------------
 *
 * fold.c
 *		Folding repeated UPDATEs of the same rows within a batch of the
 *		apply, and writing them as multi-row UPDATEs: the folding strategy
 *		of the apply's writer (applywriter.c).
 *
 * Under a steady load the same rows are updated again and again (counters,
 * balances, queue heads).  Within a batch an UPDATE that keeps its row's
 * key is merged into the pending new values of that key, and the pending
 * rows of a table are written as multi-row UPDATE ... FROM (VALUES ...)
 * statements: before any other change of that table, before any other
 * kind of message, and at the end of the batch (the writer calls
 * fold_flush_rel and fold_flush_all at those points).  Only the end state
 * of a batch is ever visible, so writing each row's last values is the
 * same as writing all of them -- provided nothing can tell the difference:
 * the table's only unique index is the key (with another one the order of
 * rows would matter to its checks), no trigger fires for the worker, and
 * equal keys arrive as equal bytes (types with canonical text and binary
 * forms).  fold_eligible decides that once per relation (when its first
 * UPDATE comes after the relation map built its entry); other tables are
 * applied change by change.
 *
 * Memory is bounded by FOLD_MAX_ROWS pending rows per table: a table that
 * reaches it is written out and starts again.
 *
 *-------------------------------------------------------------------------
 */
#include "apply_internal.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_index.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"

#define FOLD_MAX_ROWS		10000
#define FOLD_STMT_ROWS		100

static bool fold_eligible(RelMapEntry *e, Relation rel);

/* runs a statement for us: the writer's, through the batch's connection */
static FoldExecFunc fold_exec = NULL;

typedef struct FoldEntry
{
	bytea	   *key;			/* hash key: the key columns as received */
	Datum	   *values;			/* new values of all columns, merged */
	char	   *nulls;
	char	   *present;		/* '1' where the value is known */
} FoldEntry;

/* dynahash hash function: the key is a pointer to the key bytes (bytea) */
static uint32
fold_hash_key(const void *key, Size keysize)
{
	const bytea *k = *(bytea *const *) key;

	return hash_bytes((const unsigned char *) VARDATA(k), VARSIZE(k) - VARHDRSZ);
}

/* dynahash match function: 0 when both keys hold the same bytes */
static int
fold_match_key(const void *a, const void *b, Size keysize)
{
	const bytea *x = *(bytea *const *) a;
	const bytea *y = *(bytea *const *) b;

	if (VARSIZE(x) != VARSIZE(y))
		return 1;
	return memcmp(VARDATA(x), VARDATA(y), VARSIZE(x) - VARHDRSZ);
}

/* the key columns of a tuple as received, or NULL if one is missing */
static bytea *
fold_key(RelMapEntry *e, LogicalRepTupleData *tup)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoSpaces(&buf, VARHDRSZ);
	for (int i = 0; i < e->remoterel->natts; i++)
	{
		int32		len;

		if (!e->iskey[i])
			continue;
		if (tup->colstatus[i] != LOGICALREP_COLUMN_TEXT &&
			tup->colstatus[i] != LOGICALREP_COLUMN_BINARY)
			return NULL;
		len = tup->colvalues[i].len;
		appendBinaryStringInfo(&buf, (char *) &len, sizeof(len));
		appendBinaryStringInfo(&buf, tup->colvalues[i].data, len);
	}
	SET_VARSIZE(buf.data, buf.len);
	return (bytea *) buf.data;
}

/*
 * How many of the nrows pending rows from position start are not in the
 * table, looked for one by one by key.  Only asked when a multi-row UPDATE
 * touched fewer rows than it carried: tables with triggers that fire for
 * the worker are not folded, so that is normally a missing row, and the
 * count names how many.
 */
static int
fold_count_missing(RelMapEntry *e, int start, int nrows, const char *wheremask)
{
	int			n = e->remoterel->natts;
	Datum	   *keyvalues = palloc(sizeof(Datum) * (n + 1));
	char	   *keynulls = palloc(n + 1);
	SPIPlanPtr	plan = relmap_get_plan(e, 'E', NULL, wheremask, 1);
	int			missing = 0;

	for (int r = 0; r < nrows; r++)
	{
		FoldEntry  *fe = e->fold_rows[start + r];
		int			k = 0;

		for (int i = 0; i < n; i++)
		{
			if (wheremask[i] != '1')
				continue;
			keyvalues[k] = fe->values[i];
			keynulls[k] = fe->nulls[i];
			k++;
		}
		if (fold_exec(plan, keyvalues, keynulls) == 0)
			missing++;
	}
	return missing;
}

/* the rows of one shape (same columns present), from position start */
static int
fold_write_chunk(RelMapEntry *e, int start)
{
	int			n = e->remoterel->natts;
	FoldEntry  *first = e->fold_rows[start];
	char	   *setmask = palloc0(n + 1);
	char	   *wheremask = palloc0(n + 1);
	int			nrows = 0;
	int			plan_rows = 1;
	int			ncols = 0;
	int			nset = 0;
	Datum	   *values;
	char	   *nulls;
	int			k = 0;
	uint64		done;

	for (int i = 0; i < n; i++)
	{
		wheremask[i] = e->iskey[i] ? '1' : '0';
		setmask[i] = (!e->iskey[i] && first->present[i] == '1') ? '1' : '0';
		if (wheremask[i] == '1' || setmask[i] == '1')
			ncols++;
		if (setmask[i] == '1')
			nset++;
	}
	while (start + nrows < e->fold_nrows && nrows < FOLD_STMT_ROWS &&
		   strcmp(e->fold_rows[start + nrows]->present, first->present) == 0)
		nrows++;
	if (nset == 0)
		return nrows;			/* only the key is known: nothing to write */

	/* a few statement sizes, padded with the last row, keep plans few */
	while (plan_rows < nrows)
		plan_rows = Min(plan_rows * 2, FOLD_STMT_ROWS);
	values = palloc(sizeof(Datum) * plan_rows * ncols);
	nulls = palloc(plan_rows * ncols + 1);
	for (int r = 0; r < plan_rows; r++)
	{
		FoldEntry  *fe = e->fold_rows[start + Min(r, nrows - 1)];

		for (int i = 0; i < n; i++)
		{
			if (wheremask[i] != '1' && setmask[i] != '1')
				continue;
			values[k] = fe->values[i];
			nulls[k] = fe->nulls[i];
			k++;
		}
	}
	done = fold_exec(relmap_get_plan(e, 'F', setmask, wheremask, plan_rows), values, nulls);
	if (done != (uint64) nrows)
	{
		int			missing = fold_count_missing(e, start, nrows, wheremask);

		if (missing > 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("%d of %d rows to update were not found in destination table %s",
							missing, nrows, e->qualname),
					 errdetail("The destination table has diverged from the source."),
					 errhint("Remove the conflicting local change or resync the table; the mirror retries until then.")));
		elog(DEBUG1, "a trigger or rule skipped the update of %d row(s) of %s",
			 nrows - (int) done, e->qualname);
	}
	return nrows;
}

/* forget the pending rows of one table (they lived in its fold_cxt) */
static void
fold_reset_rel(RelMapEntry *e)
{
	if (e->fold_cxt != NULL)
		MemoryContextReset(e->fold_cxt);
	e->fold_hash = NULL;
	e->fold_rows = NULL;
	e->fold_nrows = 0;
	e->fold_maxrows = 0;
}

/* write the pending folded UPDATEs of one table */
void
fold_flush_rel(RelMapEntry *e)
{
	BunnyErrorContext errctx;
	MemoryContext old;
	int			at = 0;

	if (e->fold_nrows == 0)
		return;
	/* the rows may be another table's than the change being applied */
	bunny_errcontext_push(&errctx, NULL, e->qualname, InvalidXLogRecPtr);
	old = MemoryContextSwitchTo(e->fold_cxt);
	while (at < e->fold_nrows)
		at += fold_write_chunk(e, at);
	MemoryContextSwitchTo(old);
	fold_reset_rel(e);
	bunny_errcontext_pop(&errctx);
}

/* write the pending folded UPDATEs of every table */
void
fold_flush_all(void)
{
	HASH_SEQ_STATUS status;
	RelMapEntry *e;

	relmap_seq_init(&status);
	while ((e = hash_seq_search(&status)) != NULL)
		fold_flush_rel(e);
}

/*
 * Fold an UPDATE into the pending rows of its table; false if it has to be
 * applied as it comes (the caller then writes the pending rows first).  The
 * caller does not fold what must be written at once (a resync queue's
 * replay).
 */
bool
fold_update(RelMapEntry *e, LogicalRepTupleData *newtup)
{
	int			n = e->remoterel->natts;
	bytea	   *key;
	FoldEntry  *fe;
	bool		found;
	Datum	   *values;
	char	   *nulls;
	char	   *present;
	MemoryContext old;

	if (!e->fold_checked)
	{
		Relation	rel = table_open(e->localrelid, AccessShareLock);

		e->foldable = fold_eligible(e, rel);
		e->fold_checked = true;
		table_close(rel, AccessShareLock);
	}
	if (!e->foldable)
		return false;
	key = fold_key(e, newtup);
	if (key == NULL)
		return false;
	if (e->fold_nrows >= FOLD_MAX_ROWS)
		fold_flush_rel(e);

	values = palloc(sizeof(Datum) * (n + 1));
	nulls = palloc(n + 1);
	present = palloc0(n + 1);
	relmap_tuple_to_datums(e, newtup, values, nulls, present);

	if (e->fold_cxt == NULL)
		e->fold_cxt = AllocSetContextCreate(relmap_context(), "bunnydb folded updates",
											ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(e->fold_cxt);
	if (e->fold_hash == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(bytea *);
		ctl.entrysize = sizeof(FoldEntry);
		ctl.hash = fold_hash_key;
		ctl.match = fold_match_key;
		ctl.hcxt = e->fold_cxt;
		e->fold_hash = hash_create("bunnydb folded updates", 256, &ctl,
								   HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	}
	fe = hash_search(e->fold_hash, &key, HASH_ENTER, &found);
	if (!found)
	{
		fe->key = DatumGetByteaPCopy(PointerGetDatum(key));
		fe->values = palloc0(sizeof(Datum) * (n + 1));
		fe->nulls = palloc(n + 1);
		fe->present = palloc(n + 1);
		memset(fe->present, '0', n);
		fe->present[n] = '\0';
		memset(fe->nulls, ' ', n);
		if (e->fold_nrows == e->fold_maxrows)
		{
			e->fold_maxrows = Max(64, e->fold_maxrows * 2);
			e->fold_rows = e->fold_rows == NULL ?
				palloc(sizeof(FoldEntry *) * e->fold_maxrows) :
				repalloc(e->fold_rows, sizeof(FoldEntry *) * e->fold_maxrows);
		}
		e->fold_rows[e->fold_nrows++] = fe;
	}
	/* later values win; columns this UPDATE left unchanged keep earlier ones */
	for (int i = 0; i < n; i++)
	{
		if (present[i] != '1')
			continue;
		if (fe->present[i] == '1' && fe->nulls[i] != 'n' && !e->typbyval[i])
			pfree(DatumGetPointer(fe->values[i]));
		fe->present[i] = '1';
		fe->nulls[i] = nulls[i];
		fe->values[i] = nulls[i] == 'n' ? (Datum) 0 :
			datumCopy(values[i], e->typbyval[i], e->typlen[i]);
	}
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * May UPDATEs of this table be folded per key within a batch (see the file header)?
 * Only when writing a row's last values instead of each of them cannot be
 * told apart: the key is the only unique index (so the order in which
 * different rows are written cannot trip a unique check), no trigger fires
 * for the worker and no rule rewrites the statement, and equal keys arrive
 * as equal bytes (types whose text and binary forms are canonical).
 */
static bool
fold_eligible(RelMapEntry *e, Relation rel)
{
	int			n = e->remoterel->natts;
	int			nkeys = 0;
	int			key_indexes = 0;
	List	   *indexes;
	ListCell   *lc;

	if (e->full_match || rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rules != NULL)
		return false;
	if (rel->trigdesc != NULL)
	{
		/* the worker runs with session_replication_role = replica */
		for (int t = 0; t < rel->trigdesc->numtriggers; t++)
		{
			char		enabled = rel->trigdesc->triggers[t].tgenabled;

			if (enabled != TRIGGER_FIRES_ON_ORIGIN && enabled != TRIGGER_DISABLED)
				return false;
		}
	}
	for (int i = 0; i < n; i++)
	{
		Form_pg_attribute att;

		if (!e->iskey[i])
			continue;
		nkeys++;
		if (e->remoterel->atttyps[i] != e->typid[i])
			return false;
		att = TupleDescAttr(RelationGetDescr(rel), e->attmap[i] - 1);
		switch (e->typid[i])
		{
			case INT2OID:
			case INT4OID:
			case INT8OID:
			case OIDOID:
			case UUIDOID:
			case DATEOID:
			case TIMESTAMPOID:
			case TIMESTAMPTZOID:
			case BOOLOID:
				break;
			case TEXTOID:
			case VARCHAROID:
				if (!OidIsValid(att->attcollation) ||
					!get_collation_isdeterministic(att->attcollation))
					return false;
				break;
			default:
				return false;
		}
	}
	if (nkeys == 0)
		return false;

	indexes = RelationGetIndexList(rel);
	foreach(lc, indexes)
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));
		Form_pg_index idx;
		bool		is_key = true;

		if (!HeapTupleIsValid(tup))
			return false;
		idx = (Form_pg_index) GETSTRUCT(tup);
		if (!idx->indisunique && !idx->indisexclusion)
		{
			ReleaseSysCache(tup);
			continue;
		}
		if (idx->indnkeyatts != nkeys ||
			!heap_attisnull(tup, Anum_pg_index_indexprs, NULL) ||
			!heap_attisnull(tup, Anum_pg_index_indpred, NULL) ||
			idx->indisexclusion)
			is_key = false;
		for (int k = 0; is_key && k < idx->indnkeyatts; k++)
		{
			bool		found = false;

			for (int i = 0; i < n; i++)
				if (e->iskey[i] && e->attmap[i] == idx->indkey.values[k])
					found = true;
			is_key = found;
		}
		ReleaseSysCache(tup);
		if (!is_key)
			return false;		/* another unique index: order matters */
		key_indexes++;
	}
	list_free(indexes);
	return key_indexes > 0;
}

/* statements are run by exec (the writer's) */
void
fold_init(FoldExecFunc exec)
{
	fold_exec = exec;
}

/* throw away the pending rows of every table without writing them */
void
fold_discard_all(void)
{
	HASH_SEQ_STATUS status;
	RelMapEntry *e;

	relmap_seq_init(&status);
	while ((e = hash_seq_search(&status)) != NULL)
		fold_reset_rel(e);
}
