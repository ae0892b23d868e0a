/*-------------------------------------------------------------------------
 *
 * api.c
 *		The entry point of bunnydb's SQL API functions: errors without the
 *		PL/pgSQL call stack.
 *
 * The API (create_mirror, pause_mirror, ...) is written in PL/pgSQL, and
 * PL/pgSQL adds a CONTEXT line for every function an error passes through:
 * "PL/pgSQL function bunny.create_mirror(text,text,jsonb,...) line 38 at
 * PERFORM" under a message that already says what is wrong and what to do.
 * Those lines describe bunnydb's insides, not the caller's mistake, and a
 * DBA reading them in psql learns nothing from them.
 *
 * So each API function is this C function, declared with the API name and
 * signature, which calls the PL/pgSQL body (of the same name and arguments
 * in schema bunny_impl, which nobody is granted) and re-throws its error
 * with the context removed.  The
 * body runs as it always did: SECURITY DEFINER and its search_path are
 * applied by fmgr when it is called, and the caller's EXECUTE privilege is
 * checked on this entry point, where the grants are.
 *
 * The set-returning ones (logs, peer_tables, test_peer, sync_sequences)
 * go through here as well: the body gets the caller's ReturnSetInfo and,
 * being PL/pgSQL, fills it in materialize mode, which the caller reads
 * after this function returns.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(bunny_api_call);

/* the body of an API function, looked up once per call site */
static FmgrInfo *
api_body(FunctionCallInfo fcinfo)
{
	Oid			self = fcinfo->flinfo->fn_oid;
	HeapTuple	tup;
	Form_pg_proc proc;
	char	   *impl_name;
	Oid			impl;
	FmgrInfo   *body;

	if (fcinfo->flinfo->fn_extra != NULL)
		return (FmgrInfo *) fcinfo->flinfo->fn_extra;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(self));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", self);
	proc = (Form_pg_proc) GETSTRUCT(tup);
	impl_name = psprintf("bunny_impl.%s", NameStr(proc->proname));

	/*
	 * By the syscache, not LookupFuncName: that checks the caller's USAGE
	 * on bunny_impl, which nobody is granted.
	 */
	impl = GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid,
						   NameGetDatum(&proc->proname),
						   PointerGetDatum(&proc->proargtypes),
						   ObjectIdGetDatum(get_namespace_oid("bunny_impl", true)));
	ReleaseSysCache(tup);
	if (!OidIsValid(impl))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("bunnydb function %s is missing", impl_name),
				 errhint("Reinstall the extension: its SQL script and its library do not match.")));

	body = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(FmgrInfo));
	fmgr_info_cxt(impl, body, fcinfo->flinfo->fn_mcxt);
	fcinfo->flinfo->fn_extra = body;
	return body;
}

/*
 * Call the body with our arguments; an error it raises is raised again
 * as it was, without the context lines of the PL/pgSQL functions it went
 * through.
 */
Datum
bunny_api_call(PG_FUNCTION_ARGS)
{
	FmgrInfo   *body = api_body(fcinfo);
	LOCAL_FCINFO(body_fcinfo, FUNC_MAX_ARGS);
	MemoryContext cxt = CurrentMemoryContext;
	Datum		result;

	InitFunctionCallInfoData(*body_fcinfo, body, fcinfo->nargs,
							 fcinfo->fncollation, NULL, fcinfo->resultinfo);
	for (int i = 0; i < fcinfo->nargs; i++)
		body_fcinfo->args[i] = fcinfo->args[i];

	PG_TRY();
	{
		result = FunctionCallInvoke(body_fcinfo);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		edata->context = NULL;
		ReThrowError(edata);
	}
	PG_END_TRY();

	fcinfo->isnull = body_fcinfo->isnull;
	return result;
}
