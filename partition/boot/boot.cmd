# imgctl A/B boot selection for U-Boot (see docs/boot.md); RAUC's variables.
# Build: mkimage -A arm64 -T script -C none -d boot.cmd boot.scr
test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
setenv bootslot
for BOOT_SLOT in "${BOOT_ORDER}"; do
  if test -n "${bootslot}"; then
    # already chosen
  elif test "x${BOOT_SLOT}" = "xA" && test ${BOOT_A_LEFT} -gt 0; then
    setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
    setenv bootslot A
    setenv rootpart 2
  elif test "x${BOOT_SLOT}" = "xB" && test ${BOOT_B_LEFT} -gt 0; then
    setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
    setenv bootslot B
    setenv rootpart 3
  fi
done
if test -z "${bootslot}"; then
  echo "no slot with tries left: resetting tries"
  setenv BOOT_A_LEFT 3
  setenv BOOT_B_LEFT 3
  saveenv
  reset
fi
saveenv
setenv bootargs "${bootargs} root=/dev/mmcblk0p${rootpart} imgctl.slot=${bootslot} rauc.slot=${bootslot}"
load mmc 0:${rootpart} ${kernel_addr_r} /boot/Image
booti ${kernel_addr_r} - ${fdt_addr}
