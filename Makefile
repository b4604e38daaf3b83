# The two commands of the README, plus conveniences. Each script installs what it needs.
.PHONY: demo test cluster-start cluster-stop psql

demo:
	scripts/demo.sh

test:
	scripts/test.sh

cluster-start:
	scripts/cluster.sh start

cluster-stop:
	scripts/cluster.sh stop

psql:
	scripts/cluster.sh psql
