# The test command of README.md; .ci/run calls it after installing packages.
GO ?= go

.PHONY: test build demo bench fuzz

build:
	CGO_ENABLED=0 $(GO) build -o imgctl ./cmd/imgctl

test:
	bash scripts/deps.sh
	$(GO) vet ./...
	@fmt="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$fmt" ]; then echo "gofmt needed: $$fmt"; exit 1; fi
	$(GO) test -count=1 -timeout 20m ./...
	$(GO) test -count=1 -race -timeout 10m ./chunkstore/... ./manifest/... ./delta/... ./transport/...
	# Fuzz budgets are counts, not durations: with a duration, Go 1.26's fuzz
	# coordinator can report "context deadline exceeded" as a failure when the
	# time runs out under load, with no failing input (go.dev/issue/75804,
	# fixed in Go 1.27). The counts take 6-10 s each on the 2-core machine;
	# -timeout bounds a slow machine.
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 600000x -timeout 5m ./manifest
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime 500000x -timeout 5m ./manifest
	$(GO) test -run '^$$' -fuzz '^FuzzDecodePack$$' -fuzztime 60000x -timeout 5m ./delta
	$(GO) test -run '^$$' -fuzz '^FuzzExpandTorrent$$' -fuzztime 40000x -timeout 5m ./transport/swarm

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 5m ./manifest

demo:
	$(GO) run ./cmd/imgctl demo

bench:
	bash bench/compare.sh
