# bunnydb: PGXS build.
#
#   make && make install          build and install into the server found by pg_config
#   make installcheck             pg_regress suite (own temp instance) + TAP suite
#   make bench                    the benchmark against built-in logical replication
#                                 (bench/run.sh, as root; BENCH_ARGS="--only copy" etc.)
#
EXTENSION = bunnydb
MODULE_big = bunnydb
OBJS = \
	src/bunnydb.o \
	src/guard.o \
	src/launcher.o \
	src/worker.o \
	src/setup.o \
	src/snapshot.o \
	src/resync.o \
	src/applystream.o src/apply.o src/applyxact.o src/applybatch.o \
	src/applywriter.o src/relmap.o src/fold.o \
	src/stream.o \
	src/fastrecv.o \
	src/catalog.o \
	src/functions.o

DATA = $(wildcard sql/bunnydb--*.sql)

REGRESS = $(patsubst sql/%.sql,%,$(sort $(filter-out sql/bunnydb--%,$(wildcard sql/*.sql))))
REGRESS_OPTS = --temp-config=$(srcdir)/test/regress.conf --temp-instance=$(CURDIR)/tmp_regress --inputdir=$(srcdir)

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CPPFLAGS = -I$(libpq_srcdir) -Isrc
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK_INTERNAL = $(libpq)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS does not track header dependencies
$(OBJS): src/bunnydb.h src/compat.h
src/applystream.o src/apply.o src/applyxact.o src/applybatch.o src/applywriter.o \
	src/relmap.o src/fold.o src/resync.o: src/apply_internal.h

# the benchmark (bench/run.sh; see its header): needs the library installed
.PHONY: bench
bench:
	bash $(srcdir)/bench/run.sh $(BENCH_ARGS)
