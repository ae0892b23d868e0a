/*-------------------------------------------------------------------------
 *
 * sequences.c
 *		Taking over the source's sequence values on the destination.
 *
 * Sequences are not replicated by the stream.  Their values are set once,
 * after a table's copy (copypart.c), after a resync, and on request (setup),
 * so that the destination can take over writes.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"
#include "source.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"

/*
 * Take over the source's current sequence values ([{"source", "dest"}]).
 * Sequences are not replicated by the stream; this sets them once, after
 * the copy, so that the destination can take over writes.
 */
void
sequences_sync(PGconn *conn, const char *mirror_name, const char *sequences_json)
{
	Oid			types[1] = {TEXTOID};
	Datum		vals[1];
	int			n;
	char	  **src;
	char	  **dst;

	vals[0] = CStringGetTextDatum(sequences_json ? sequences_json : "[]");
	SPI_connect();
	SPI_execute_with_args("SELECT s->>'source', s->>'dest' FROM jsonb_array_elements($1::jsonb) s",
						  1, types, vals, NULL, true, 0);
	n = (int) SPI_processed;
	src = palloc(sizeof(char *) * (n + 1));
	dst = palloc(sizeof(char *) * (n + 1));
	for (int i = 0; i < n; i++)
	{
		src[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		dst[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
	}
	for (int i = 0; i < n; i++)
	{
		char	   *last_value;
		bool		is_called;
		char	   *sql;

		source_sequence_value(conn, src[i], &last_value, &is_called);
		sql = psprintf("SELECT pg_catalog.setval(%s, %s, %s)",
					   quote_literal_cstr(dst[i]), last_value, is_called ? "true" : "false");
		if (SPI_execute(sql, false, 0) < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not set sequence %s", dst[i])));
	}
	SPI_finish();
	if (n > 0)
		bunny_log(mirror_name, "INFO", psprintf("took over %d sequence value(s) from the source", n),
				  NULL);
}
