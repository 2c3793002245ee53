#!/bin/sh
# A do-nothing RAUC custom bootloader backend: slot A is primary and good.
case "$1" in
  get-primary) echo A ;;
  get-state) echo good ;;
  get-current) echo A ;;
  set-primary | set-state) ;;
  *) exit 1 ;;
esac
