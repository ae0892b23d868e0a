/*-------------------------------------------------------------------------
 *
 * bunnydb.c
 *		Module entry point: defines the settings, asks for shared memory,
 *		installs the guards and registers the launcher.
 *
 * bunnydb only works when loaded through shared_preload_libraries: the
 * launcher is a static background worker and the worker slots live in
 * shared memory sized at server start.  Each piece lives in the file of
 * its role (settings.c, workerslot.c, guard.c, launcher.c); this file only
 * calls them, in order, and nothing calls back into it.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"

#include "fmgr.h"
#include "miscadmin.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;					/* bunny_check_preload() reports it */

	settings_define();
	workerslot_shmem_init();
	bunny_install_guards();
	bunny_register_launcher();
}
