# bunnydb: PGXS build.
#
#   make && make install     build and install into the server found by pg_config
#   make installcheck        PGXS's: pg_regress (sql/*.sql against expected/)
#                            on the RUNNING server, then the TAP suite
#                            (test/t/*.pl; each file starts clusters of its own)
#   make regresscheck        pg_regress on a temporary instance of its own,
#                            configured by test/regress.conf
#   make tapcheck            the TAP suite alone (PROVE_TESTS=test/t/001_x.pl
#                            for some files, PROVE_FLAGS=-v)
#   make bench               the benchmark against built-in logical replication
#                            (bench/run.sh, as root; BENCH_ARGS="--only copy" etc.)
#
# `make installcheck` connects as psql does (PGHOST, PGPORT, PGUSER) and
# needs a superuser and a server started with the settings of
# test/regress.conf: shared_preload_libraries = 'bunnydb' (the launcher and
# the workers are background workers registered at server start),
# wal_level = logical, and worker, slot and walsender limits as large.  It
# creates the database contrib_regression and the roles bunny_admin and
# bunny_monitor there.  test/run_tests.sh, the whole suite, runs
# `make regresscheck` and `make tapcheck` instead, as separate steps.
#
EXTENSION = bunnydb
MODULE_big = bunnydb
OBJS = \
	src/bunnydb.o \
	src/settings.o \
	src/workerslot.o \
	src/guard.o \
	src/launcher.o \
	src/worker.o \
	src/setup.o \
	src/schema.o \
	src/snapshot.o \
	src/copypool.o src/copypart.o \
	src/resync.o \
	src/applystream.o src/apply.o src/applyxact.o src/applybatch.o \
	src/applywriter.o src/relmap.o src/fold.o \
	src/stream.o \
	src/source.o src/sourcedesc.o src/sourcetypes.o \
	src/fastrecv.o \
	src/catalog.o \
	src/functions.o \
	src/state.o \
	src/api.o

DATA = $(wildcard sql/bunnydb--*.sql)

REGRESS = $(patsubst sql/%.sql,%,$(sort $(filter-out sql/bunnydb--%,$(wildcard sql/*.sql))))
EXTRA_CLEAN = tmp_regress

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CPPFLAGS = -I$(libpq_srcdir) -Isrc
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK_INTERNAL = $(libpq)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS does not track header dependencies
$(OBJS): src/bunnydb.h src/compat.h src/source.h src/state.h src/schema.h
src/applystream.o src/apply.o src/applyxact.o src/applybatch.o src/applywriter.o \
	src/relmap.o src/fold.o src/resync.o: src/apply_internal.h
src/snapshot.o src/copypool.o src/copypart.o src/resync.o: src/copypool.h

# the benchmark (bench/run.sh; see its header): needs the library installed
.PHONY: bench
bench:
	bash $(srcdir)/bench/run.sh $(BENCH_ARGS)

# pg_regress on a temporary instance: a plain `make installcheck` cannot
# configure the server it is given (shared_preload_libraries needs a
# restart), and PGXS's own `make check` is refused for an extension built
# outside the source tree, which has no temporary install of the server.
# So this target starts the installed server (pg_config's bindir, where
# `make install` put bunnydb) on a scratch data directory with
# test/regress.conf, runs the same tests and stops it.
.PHONY: regresscheck
regresscheck:
	$(pg_regress_installcheck) --temp-instance=$(CURDIR)/tmp_regress \
		--temp-config=$(srcdir)/test/regress.conf $(REGRESS_OPTS) $(REGRESS)

# The TAP half of installcheck on its own, so that a pg_regress failure does
# not hide the TAP results (installcheck stops at the first failing half).
.PHONY: tapcheck
tapcheck:
	$(prove_installcheck)
