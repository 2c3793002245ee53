"""dm-verity, systemd-boot under OVMF (qemu-tests/verity_checks.py): a byte of slot b flipped
while b is tried, then after b was marked good; each time b's initrd finds it, marks b bad and
the machine comes back on slot a, `status` names b as corrupt, /data is kept, and a later boot
stays on a.
"""

# Measured under TCG on 2026-12-07.
EXPECTED_SECONDS = 170

import harness
import verity_checks


def run(t):
    verity_checks.flavour(t, "systemd-boot", harness.OVMF, again=True)
