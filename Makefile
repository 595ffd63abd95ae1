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
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 15s ./manifest
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime 10s ./manifest
	$(GO) test -run '^$$' -fuzz '^FuzzDecodePack$$' -fuzztime 10s ./delta
	$(GO) test -run '^$$' -fuzz '^FuzzExpandTorrent$$' -fuzztime 10s ./transport/swarm

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 5m ./manifest

demo:
	$(GO) run ./cmd/imgctl demo

bench:
	bash bench/compare.sh
