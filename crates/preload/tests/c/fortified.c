/* Built by tests/preload.rs with _FORTIFY_SOURCE=2 and _FILE_OFFSET_BITS=64, so that glibc's
 * headers route its calls to the LFS and fortified symbols (open64, __open64_2, __read_chk,
 * __pread64_chk, pwrite64, openat64) instead of the plain ones: the preload must serve those
 * too. Prints "ok" and exits 0 when every step behaves; otherwise names the failing step. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define IOMMU_IOAS_ALLOC _IO(';', 0x81)
struct ioas_alloc { uint32_t size, flags, out_ioas_id; };

#define CHECK(cond, what) do { if (!(cond)) { printf("FAIL %s (errno %d)\n", what, errno); return 1; } } while (0)

int main(int argc, char **argv)
{
	/* Flags the compiler cannot see through: the fortified open calls __open64_2. */
	int flags = argc > 5 ? O_RDONLY : O_RDWR;
	int fd = open("/dev/iommu", flags);
	CHECK(fd >= 0, "open /dev/iommu (__open64_2)");
	struct ioas_alloc alloc = { sizeof(alloc), 0, 0 };
	CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, &alloc) == 0 && alloc.out_ioas_id != 0, "IOAS_ALLOC");

	int fd2 = openat(AT_FDCWD, "/dev/iommu", O_RDWR | O_CLOEXEC);
	CHECK(fd2 >= 0, "openat64 /dev/iommu");
	CHECK(fcntl(fd2, F_GETFD) == FD_CLOEXEC, "O_CLOEXEC through openat64");

	char path[64];
	snprintf(path, sizeof(path), "/proc/self/task/%d/fail-nth", (int)getpid());
	int knob = open(path, O_RDWR);
	CHECK(knob >= 0, "open fail-nth (open64)");
	CHECK(pwrite(knob, "12", 2, 0) == 2, "pwrite64 fail-nth");
	/* A length the compiler cannot see makes the fortified wrappers call the _chk symbols. */
	volatile size_t unknown = 16;
	size_t len = unknown;
	char buf[16] = { 0 };
	CHECK(pread(knob, buf, len, 0) == 3 && strcmp(buf, "12\n") == 0, "__pread64_chk");
	memset(buf, 0, sizeof(buf));
	CHECK(read(knob, buf, len) == 3 && strcmp(buf, "12\n") == 0, "__read_chk");
	CHECK(read(knob, buf, len) == 0, "__read_chk at end of file");
	CHECK(pwrite(knob, "0", 1, 0) == 1, "disarm");

	char junk[8];
	CHECK(read(fd, junk, sizeof(junk)) == -1 && errno == EINVAL, "read of an iommufd");
	CHECK(close(knob) == 0 && close(fd2) == 0 && close(fd) == 0, "close");
	puts("ok");
	return 0;
}
