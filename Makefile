# edgewatch — the user's front door. `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EW := $(BIN)/edgewatch
MPLIB := build/mplib
BOARD ?= esp32-devkitc-dht22
PORT ?=
DATA ?= ../shared/data/occupancy/datatraining.txt
MODEL ?= models/default
ARCH ?= tcn
EPOCHS ?= 10
# two pytest workers, a test file each at a time (module fixtures such as the RabbitMQ
# cluster start once): most of the suite waits on brokers, boards and subprocesses, and the
# suite took 26 min on one worker and 17 min on two (2 cores). PYTEST_ARGS= runs it serially.
PYTEST_ARGS ?= -n 2 --dist loadfile
FIRMWARE ?=
AMPY ?=
UMQTT_FROM ?=
DEPLOY_ARGS ?=
DEVICES ?= 3
BROKER ?=
SIM_ARGS ?=
DEMO_FAST ?=
DEMO_ARGS ?=
DB ?= sqlite:///edgewatch.db
DASH_ARGS ?=
USERS ?=
# chromium + chromium-driver: Debian's browser and its matching driver for the dashboard's browser test
# gcc-riscv64-unknown-elf, picolibc-riscv64-unknown-elf, qemu-system-misc: the RV32 runtime
# (edgewatch.board.rv32: MicroPython for the ESP32-C3's instruction set under QEMU)
APT_PKGS := mosquitto chromium chromium-driver gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf qemu-system-misc

.PHONY: help apt setup test lint train compare convert flash deploy repl run logs sim bridge collect dashboard demo bench bench-detect reliability clean cluster cluster-down

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: apt $(VENV)/.stamp $(MPLIB)/.stamp  ## install Debian packages, .venv and MicroPython libraries

# checked on every setup (a dpkg query each): a package added to APT_PKGS later is installed
# on machines set up before it
apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.stamp: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,pipeline]'
	touch $@

# umqtt comes from its published package, never copied into the repo.
$(MPLIB)/.stamp: host/board/fetch_mplib.py $(VENV)/.stamp
	$(BIN)/python -m edgewatch.board.fetch_mplib $(MPLIB)
	touch $@

test: setup  ## run the whole test suite (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup  ## ruff lint
	$(BIN)/ruff check .

train: setup  ## train a model: make train DATA=... ARCH=tcn EPOCHS=10 MODEL=models/default
	$(EW) train --data $(DATA) --arch $(ARCH) --epochs $(EPOCHS) --out $(MODEL)

compare: setup  ## train TCN, LSTM and GRU on DATA and print the table
	$(EW) compare --data $(DATA) --epochs $(EPOCHS)

convert: setup  ## int8 TFLite, firmware blob, TFLM C array, emlearn C: make convert MODEL=...
	$(EW) convert --model $(MODEL) --out $(MODEL)

flash: setup  ## erase + write MicroPython, then deploy: make flash BOARD=... PORT=/dev/ttyUSB0 [FIRMWARE=image.bin]
	$(EW) flash --board $(BOARD) --port "$(PORT)" --model $(MODEL) $(if $(FIRMWARE),--firmware "$(FIRMWARE)") $(if $(UMQTT_FROM),--umqtt-from "$(UMQTT_FROM)",$(if $(filter 1,$(AMPY)),--umqtt-from $(MPLIB))) $(if $(filter 1,$(AMPY)),--ampy) $(DEPLOY_ARGS)

deploy: setup  ## copy firmware (.mpy), model, config (.env secrets), umqtt; reset: make deploy PORT=... [AMPY=1]
	$(EW) deploy --board $(BOARD) --port "$(PORT)" --model $(MODEL) $(if $(UMQTT_FROM),--umqtt-from "$(UMQTT_FROM)",$(if $(filter 1,$(AMPY)),--umqtt-from $(MPLIB))) $(if $(filter 1,$(AMPY)),--ampy) $(DEPLOY_ARGS)

run: setup  ## deploy, reset and follow the board's console: make run PORT=/dev/ttyUSB0 (Ctrl-] leaves)
	$(EW) deploy --board $(BOARD) --port "$(PORT)" --model $(MODEL) $(if $(UMQTT_FROM),--umqtt-from "$(UMQTT_FROM)",$(if $(filter 1,$(AMPY)),--umqtt-from $(MPLIB))) $(if $(filter 1,$(AMPY)),--ampy) $(DEPLOY_ARGS)
	$(EW) repl --port "$(PORT)"

logs: setup  ## follow boards over MQTT, one line per reading/alert/status: make logs [ID="gh-01 gh-02"]
	$(EW) logs $(ID) $(if $(BROKER),--mqtt "$(BROKER)")

repl: setup  ## open the board's MicroPython REPL: make repl PORT=/dev/ttyUSB0 (Ctrl-] leaves)
	$(EW) repl --port "$(PORT)"

sim: setup  ## simulated boards (real firmware, unix port) publishing to BROKER: make sim DEVICES=3
	$(EW) sim --devices $(DEVICES) $(if $(BROKER),--broker "$(BROKER)") $(SIM_ARGS)

bench-detect: setup  ## detection benchmarks (fault suite, all NAB files; board vs streaming baseline) -> docs/benchmarks_detect.md
	nice -n 10 $(BIN)/python -m tools.bench_detect --context long --out docs/benchmarks_detect_long
	nice -n 10 $(BIN)/python -m tools.bench_detect

cluster: setup  ## 3 local RabbitMQ nodes (quorum queues, MQTT): make cluster [USERS=devices.txt] (docs/scaling.md)
	$(EW) cluster up $(if $(USERS),--users "$(USERS)")

cluster-down:  ## stop the nodes of make cluster
	$(EW) cluster down

demo: setup  ## the whole system, no board needed: model, broker, 3 simulated boards, alerts, PNG
	$(EW) demo $(if $(filter 1,$(DEMO_FAST)),--fast) $(DEMO_ARGS)

bridge: setup  ## run the alert bridge: SMS via Twilio from .env (a dry run without TWILIO_*)
	$(EW) bridge

collect: setup  ## run the collector: make collect DB=sqlite:///edgewatch.db
	$(EW) collect $(if $(DB),--db $(DB))

dashboard: setup  ## web dashboard on http://127.0.0.1:8080: make dashboard [DB=sqlite:///demo-out/demo.db]
	$(EW) dashboard --db "$(DB)" $(DASH_ARGS)

bench: setup  ## regenerate docs/benchmarks.md and docs/benchmarks.json
	$(BIN)/python -m tools.bench

reliability: setup  ## the integrity suite's attacks and faults, their figures, poison throughput -> docs/reliability.md
	$(BIN)/python -m tools.reliability

clean:  ## remove build outputs (keeps .venv)
	rm -rf build/firmware runs
