// Package partition manages A/B slots and the boot-slot switch.
//
// # Bootloaders
//
// Bootloader is the switch: which slot boots next, which slots are good.
// Grub (grub-editenv on a grubenv file) and UBoot (fw_printenv/fw_setenv on
// a U-Boot environment) use the real tools and the variables RAUC uses, so
// `rauc status` reads the same state; every change is ONE write of all the
// variables it touches. The bootloader side (the GRUB script and the U-Boot
// boot script that count boots and fall back) is in docs/boot.md; tests
// simulate boots by applying exactly those rules to the same env files, and
// run Debian's RAUC against the same grubenv to check it reads the same
// primary and slot states after every change. partition/imgctl-bootslot is
// the same switch as a POSIX shell script, tested by the same simulators.
//
// Slot writing, slot state and `imgctl slot` come in later changes.
package partition
