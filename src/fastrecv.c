/*-------------------------------------------------------------------------
 *
 * fastrecv.c
 *		COPY into a destination table from a data-source callback, as the
 *		initial copy and the apply's COPY runs do, with a faster binary
 *		receive function for text, varchar and bpchar values that are
 *		plain ASCII.
 *
 * Every text-like value the initial copy, a COPY run or a change brings in
 * goes through the type's receive function.  Those functions are general:
 * they verify the bytes in the database encoding and, for bpchar and
 * varchar, count characters with a per-character function call to check
 * the length and to pad.  For the typical value -- plain ASCII, already
 * padded by the source to the column's length -- all of that finds
 * nothing to do, yet it was about a quarter of the destination's CPU time
 * of the initial copy of pgbench_accounts (its filler is char(84)).
 *
 * fastrecv_install() points a receive function's FmgrInfo at
 * bunny_textlike_recv, which checks in one tight loop that the value is
 * ASCII without NUL bytes (valid in every server encoding, and characters
 * are bytes) and that its length needs neither padding nor a length check
 * against the column's typmod; it then builds the value directly.  Any
 * other value is passed on to the type's own receive function (the
 * FmgrInfo keeps its fn_oid), so results and errors are those of the
 * server's functions.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"
#include "compat.h"

#include "commands/copy.h"
#include "mb/pg_wchar.h"
#include "nodes/makefuncs.h"
#include "parser/parse_relation.h"
#include "utils/ascii.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"

/*
 * True if len bytes at p are all ASCII and none is NUL.  The server's
 * is_valid_ascii() checks eight bytes per step (a byte loop is not
 * vectorized at -O2, and was about 8 % of a copy worker's CPU time for
 * pgbench_accounts' char(84) filler); the last len % 8 bytes one by one.
 */
static inline bool
ascii_without_nul(const char *p, int len)
{
	int			whole = len & ~7;

	if (whole > 0 && !is_valid_ascii((const unsigned char *) p, whole))
		return false;
	for (int i = whole; i < len; i++)
	{
		unsigned char c = (unsigned char) p[i];

		if (c == 0 || c >= 0x80)
			return false;
	}
	return true;
}

/*
 * Receive function for text, varchar and bpchar: the value as is when that
 * is what the type's own function would return, else that function.
 */
static Datum
bunny_textlike_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	int32		typmod = PG_GETARG_INT32(2);
	Oid			fn = fcinfo->flinfo->fn_oid;
	const char *p = buf->data + buf->cursor;
	int			len = buf->len - buf->cursor;
	bool		as_is = ascii_without_nul(p, len);

	/* ASCII: characters are bytes; bpchar pads, both truncate or reject */
	if (as_is && typmod >= (int32) VARHDRSZ)
	{
		if (fn == F_BPCHARRECV)
			as_is = (len == typmod - (int32) VARHDRSZ);
		else if (fn == F_VARCHARRECV)
			as_is = (len <= typmod - (int32) VARHDRSZ);
	}
	if (!as_is)
	{
		switch (fn)
		{
			case F_BPCHARRECV:
				return bpcharrecv(fcinfo);
			case F_VARCHARRECV:
				return varcharrecv(fcinfo);
			default:
				return textrecv(fcinfo);
		}
	}
	buf->cursor = buf->len;
	PG_RETURN_TEXT_P(cstring_to_text_with_len(p, len));
}

/*
 * Use bunny_textlike_recv for a receive function set up in flinfo if it is
 * that of text, varchar or bpchar; true if it does.
 */
bool
fastrecv_install(FmgrInfo *flinfo)
{
	switch (flinfo->fn_oid)
	{
		case F_TEXTRECV:
		case F_VARCHARRECV:
		case F_BPCHARRECV:
			flinfo->fn_addr = bunny_textlike_recv;
			return true;
		default:
			return false;
	}
}

/*
 * Use bunny_textlike_recv for the text-like columns of a binary COPY into
 * rel that BeginCopyFrom set up.
 */
static void
fastrecv_install_copy(CopyFromState cstate, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	FmgrInfo   *in_functions = bunny_copy_in_functions(cstate);

	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped)
			(void) fastrecv_install(&in_functions[i]);
}

/*
 * COPY the rows that read_data hands over (binary COPY, or text in the
 * database encoding) into the columns attnames of rel, which the caller
 * has opened with RowExclusiveLock; returns the number of rows.  The
 * server's COPY machinery does the work: multi-row heap inserts through
 * a buffer ring, index entries, constraints, triggers.  With flush_rows
 * between 1 and 1000, a binary COPY writes out its buffered rows every
 * flush_rows rows instead of every 1000; 0 keeps CopyFrom's own limits.
 */
uint64
bunny_copy_from(Relation rel, List *attnames, bool binary, copy_data_source_cb read_data,
				int flush_rows)
{
	List	   *options;
	ParseState *pstate;
	CopyFromState cstate;
	uint64		rows;

	options = list_make1(makeDefElem("format",
									 (Node *) makeString(binary ? "binary" : "text"), -1));
	/* text values are in the database encoding already, as for SPI */
	if (!binary)
		options = lappend(options, makeDefElem("encoding",
											   (Node *) makeString((char *) GetDatabaseEncodingName()), -1));
	pstate = make_parsestate(NULL);
	/* CopyFrom resolves its target through the range table */
	(void) addRangeTableEntryForRelation(pstate, rel, RowExclusiveLock, NULL, false, false);
	cstate = BeginCopyFrom(pstate, rel, NULL, NULL, false, read_data, attnames, options);
	if (binary)
	{
		fastrecv_install_copy(cstate, rel);
		if (flush_rows > 0)
			bunny_copy_set_binary_flush_rows(cstate, flush_rows);
	}
	rows = CopyFrom(cstate);
	EndCopyFrom(cstate);
	free_parsestate(pstate);
	return rows;
}
