"""dm-verity, the GRUB disk under SeaBIOS (qemu-tests/verity_checks.py): a block of slot b's
hash tree damaged while b is tried, then a byte of b's image flipped after b was marked good;
each time b's initrd finds it, marks b bad and the machine comes back on slot a, `status`
names b as corrupt, /data is kept.
"""

# Measured under TCG on 2026-12-07.
EXPECTED_SECONDS = 150

import harness
import verity_checks


def run(t):
    verity_checks.flavour(t, "grub", harness.SEABIOS)
