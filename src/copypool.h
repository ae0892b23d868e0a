/*-------------------------------------------------------------------------
 *
 * copypool.h
 *		The parallel copy of tables from one exported snapshot of the source:
 *		the pool of snapshot workers (copypool.c) and the copy of one part
 *		(copypart.c).  The initial snapshot (snapshot.c) and resync
 *		(resync.c) call down into it; it calls neither.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COPYPOOL_H
#define COPYPOOL_H

#include "bunnydb.h"

/* copypool.c: the parts of the tables to copy, and the workers copying them */
typedef struct CopyPool CopyPool;
extern int	copypool_insert_parts(int32 mirror_id, const char *where_clause);
extern CopyPool *copypool_start(Mirror *m, PGconn *holder, const char *snapshot_name,
								int nparts);
extern int	copypool_tick(CopyPool *pool, Mirror *m);
extern int	copypool_size(CopyPool *pool);
extern void copypool_wait(CopyPool *pool);
extern PGDLLEXPORT void bunny_snapshot_worker_main(Datum arg);

/* copypart.c: one part's copy, a table's finish */
extern bool copypart_claim_by_flag(void);
extern bool copypart_copy(PGconn *conn, const char *mirror_name, int32 mirror_id,
						  const char *schema, const char *table, int part_no,
						  void (*on_wait) (void));
extern void copypart_finish_table(PGconn *conn, const char *mirror_name, int32 mirror_id,
								  const char *schema, const char *table, bool indexes);

#endif							/* COPYPOOL_H */
