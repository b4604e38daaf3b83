# The two commands of the README, plus conveniences. Each script installs what it needs.
.PHONY: demo test test-bi bench cluster-start cluster-stop psql

demo:
	scripts/demo.sh

test:
	scripts/test.sh

# Apache Superset against the extension (optional; not part of `make test`, not run in CI).
test-bi:
	scripts/test-bi.sh

# Benchmarks, side by side with their baselines (plain SQL, datajoint-python); not part of test.
bench:
	scripts/bench.sh

cluster-start:
	scripts/cluster.sh start

cluster-stop:
	scripts/cluster.sh stop

psql:
	scripts/cluster.sh psql
