package cluster

import (
	"time"

	"golang.org/x/sys/unix"
)

// BootClock is the Clock of a running proxy: CLOCK_BOOTTIME, which is
// monotonic and keeps counting while the machine is suspended, so a lease
// cannot outlive a suspend.
type BootClock struct{}

var _ Clock = BootClock{}

// Now returns the time since boot.
func (BootClock) Now() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		// Linux has had CLOCK_BOOTTIME since 2.6.39; nothing sane can
		// continue without a clock.
		panic("cluster: clock_gettime(CLOCK_BOOTTIME): " + err.Error())
	}
	return time.Duration(ts.Nano())
}
