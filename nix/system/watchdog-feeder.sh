# The running system's half of the hardware watchdog (docs/nix.md): abinit armed /dev/watchdog
# and left it armed; init starts (and respawns) this feeder. It feeds only while init (PID 1)
# still works: each round it leaves an orphan behind, which only PID 1 can reap, and feeds only
# if that orphan is gone a round later. So a system whose init never starts the feeder, or whose
# init stops reaping, is reset after the timeout, and the boot counts as a failed try.
# Run by busybox sh with PATH set by its caller; reads AB_WATCHDOG* from /run/abinit/env.
dev=$(sed -n 's/^AB_WATCHDOG=//p' /run/abinit/env 2>/dev/null)
timeout=$(sed -n 's/^AB_WATCHDOG_TIMEOUT=//p' /run/abinit/env 2>/dev/null)
if [ -z "$dev" ]; then
    # Not armed at boot (no device, or off): nothing to feed. Stay, as init respawns an exit.
    exec sleep 2147483647
fi
case "$timeout" in ''|*[!0-9]*) timeout=60 ;; esac
round=$((timeout / 4))
[ "$round" -ge 1 ] || round=1
exec 3>"$dev" || { echo "watchdog-feeder: cannot open $dev" >&2; sleep "$round"; exit 1; }
echo "watchdog-feeder: feeding $dev every $round s while init reaps (timeout $timeout s)"
printf . >&3
starving=
while :; do
    # The grandchild outlives its parent (0.2 s: so that the parent cannot reap it itself), so
    # PID 1 inherits it and must reap it.
    orphan=$(sh -c 'usleep 200000 </dev/null >/dev/null 2>&1 & echo $!')
    sleep "$round"
    if [ -e "/proc/$orphan" ]; then
        [ -n "$starving" ] || echo "watchdog-feeder: init has not reaped process $orphan in $round s; not feeding" >&2
        starving=1
    else
        printf . >&3
        starving=
    fi
done
