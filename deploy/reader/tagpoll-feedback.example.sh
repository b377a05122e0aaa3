#!/bin/sh
# An example feedback hook ([feedback] command in device.toml): blink a
# green or red LED on a Raspberry Pi's GPIO for readers without outputs
# (ID-12, Parallax, line readers), using libgpiod's `gpioset` (apt install
# gpiod; 1.x and 2.x). Run by tagpoll-reader for every outcome at one of its
# readers, with TAGPOLL_READER, TAGPOLL_OUTCOME (accepted, changed,
# duplicate, rejected), TAGPOLL_REASON, TAGPOLL_VOTER_NAME, ... set; killed
# after 5 s. The service user needs the gpio group.
set -eu

# The 40-pin header's GPIO chip (`gpiodetect`; gpiochip4 on a Raspberry Pi 5 with older kernels).
chip=gpiochip0
# GPIO lines per reader: "GREEN RED" (BCM numbers).
case "$TAGPOLL_READER" in
    tea-left)   pins="17 27" ;;
    water-left) pins="22 23" ;;
    juice-left) pins="24 25" ;;
    *) exit 0 ;;  # the SM130 shows outcomes itself
esac
green=${pins% *}
red=${pins#* }

case "$TAGPOLL_OUTCOME" in
    accepted|changed) on="$green=1" ;;
    duplicate)        on="$green=1 $red=1" ;;
    *)                on="$red=1" ;;
esac

# Hold the lines for one second, then switch them off and exit.
# shellcheck disable=SC2086
if gpioset --version 2>/dev/null | grep -q ' v1\.'; then
    # libgpiod 1.x (Debian 12 / Raspberry Pi OS bookworm)
    exec gpioset --mode=time --sec=1 "$chip" $on
else
    # libgpiod 2.x (Debian 13 / trixie): toggle after 1 s; a last period of 0 exits
    exec gpioset --chip "$chip" --toggle 1s,0 $on
fi
