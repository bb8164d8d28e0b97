# Entry points of the artifact. Each target is one command that also works typed by hand.
#   make artifact                 every notebook (profile tiny), then the claims ledger
#   make notebook NAME=01_tie     one notebook (NAME: a name, prefix or glob)
#   make sweep NAME=02 JOBS=32    the paper profile on Slurm, one job per run (submitit)
#   make claims                   tables/claims.{md,csv} from params/claims.yaml
#   make test                     the README's test command (what .ci/run runs)
#   make reproducible             the main job twice; the tables must be byte-identical (except
#                                 wall-clock *_times tables and the ledger that quotes them)
PY ?= python
PROFILE ?= tiny
JOBS ?= 1
NAME ?=
GPUS ?= 1
PARTITION ?=
TABLES := $(if $(filter tiny,$(PROFILE)),tables,runs/$(PROFILE)/tables)

.PHONY: artifact notebook sweep claims test reproducible

artifact:
	$(PY) -m timerome.run --profile $(PROFILE) --jobs $(JOBS)
	$(PY) -m timerome.claims --profile $(PROFILE)

notebook:
	@test -n "$(NAME)" || { echo "usage: make notebook NAME=<notebook> [PROFILE=tiny]"; exit 2; }
	$(PY) -m timerome.run $(NAME) --profile $(PROFILE) --jobs $(JOBS)

sweep:
	$(PY) -m timerome.run $(NAME) --profile $(if $(filter tiny,$(PROFILE)),paper,$(PROFILE)) --slurm \
		--jobs $(JOBS) --gpus $(GPUS) $(if $(PARTITION),--partition $(PARTITION))

claims:
	$(PY) -m timerome.claims --profile $(PROFILE)

test:
	$(PY) -m pytest tests --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks

reproducible:
	$(PY) -m timerome.run --profile $(PROFILE) --force
	$(PY) -m timerome.claims --profile $(PROFILE)
	mkdir -p runs && find $(TABLES) -maxdepth 1 -type f ! -name '.*' ! -name '*_times.*' ! -name 'claims.*' | sort | xargs sha256sum > runs/tables-$(PROFILE).sha256
	$(PY) -m timerome.run --profile $(PROFILE) --force
	$(PY) -m timerome.claims --profile $(PROFILE)
	sha256sum --check --quiet runs/tables-$(PROFILE).sha256 && echo "tables byte-identical across two runs"
