/*
 * Drover test guest: the ring-3 workload.
 *
 * Runs with IOPL 3, interrupts off, on an identity map of the first 4 GiB. Everything
 * is polled; the only VM exits are the port and MMIO accesses below. Parameters come
 * from the kernel command line (hvm_start_info.cmdline_paddr):
 *
 *   drover.tick_ms=N      print "drover-guest: tick K" every N ms (default 100)
 *   drover.tsc_mhz=N      TSC frequency used to time ticks (default 2300)
 *   drover.dirty_mib=N    rewrite N MiB of memory every tick (dirty-page load)
 *   drover.blk=write:TOK  write TOK to sector 0 of the virtio-blk disk
 *   drover.blk=read       read sector 0 of the disk and print what is there
 *   drover.ticks=N        power off after N ticks (0: run until asked)
 *   virtio_mmio.device=4K@0xADDR:IRQ   where the virtio-blk device is (Linux syntax)
 *
 * Between ticks the guest writes the milliseconds left to port 0xf6, where Drover's VMM
 * idles the vCPU (a ring-3 guest cannot halt); elsewhere that port does nothing.
 *
 * Serial input: 'p' powers off (graceful shutdown), 'r' resets (reboot).
 * Power-off writes to port 0xf4 (Drover's VMM; QEMU's isa-debug-exit), then to the ACPI
 * sleep control of QEMU's q35, pc and microvm machines; reset uses the i8042 reset line
 * (port 0x64, 0xfe).
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

extern u64 start_info_paddr;

#define COM1 0x3f8
#define POWER_OFF_PORT 0xf4
#define IDLE_PORT 0xf6
#define MARKER "DROVER-GUEST-READY"

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) {
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u64 rdtsc(void) {
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
static inline u32 mmio_read(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_write(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

static void putc_(char c) {
    /* No wait on the transmit-empty bit: every VMM here drains the THR at once. */
    outb(COM1, (u8)c);
}
static void puts_(const char *s) {
    while (*s) putc_(*s++);
}
static void putu(u64 v) {
    char buf[24];
    int i = 0;
    do {
        buf[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i) putc_(buf[--i]);
}
static int serial_rx(void) { return (inb(COM1 + 5) & 1) ? inb(COM1) : -1; }

/* Power off, trying each machine's way in turn; the first that works never returns. */
static void power_off(void) {
    puts_("drover-guest: power off\n");
    for (;;) {
        outb(POWER_OFF_PORT, 0);                   /* Drover's VMM; QEMU isa-debug-exit */
        outw(0x604, 0x2000);                       /* QEMU q35: ICH9 PM1a_CNT, SLP_EN, S5 */
        outw(0xb004, 0x2000);                      /* QEMU pc: PIIX4 PM1a_CNT */
        *(volatile u8 *)0xfea00200UL = (5 << 2) | 0x20; /* QEMU microvm: GED sleep control, S5 */
    }
}
static void reset(void) {
    puts_("drover-guest: reset\n");
    for (;;) outb(0x64, 0xfe);
}

/* ---- command line ---- */

static const char *cmdline = "";

static const char *param(const char *key) {
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ') p++;
        const char *k = key, *q = p;
        while (*k && *q == *k) k++, q++;
        if (!*k && *q == '=') return q + 1;
        while (*p && *p != ' ') p++;
    }
    return 0;
}
static u64 parse_num(const char *s, u64 dflt) {
    if (!s) return dflt;
    u64 v = 0;
    int base = 10;
    if (s[0] == '0' && s[1] == 'x') base = 16, s += 2;
    for (;; s++) {
        int d;
        if (*s >= '0' && *s <= '9') d = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
        else if (base == 16 && *s >= 'A' && *s <= 'F') d = *s - 'A' + 10;
        else break;
        v = v * (u64)base + (u64)d;
    }
    return v;
}
static int starts_with(const char *s, const char *pre) {
    while (*pre)
        if (*s++ != *pre++) return 0;
    return 1;
}

/* ---- virtio-blk over virtio-mmio (version 2), polled ---- */

#define VQ_SIZE 8
struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[VQ_SIZE]; u16 used_event; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[VQ_SIZE]; u16 avail_event; };
struct blk_req { u32 type; u32 reserved; u64 sector; };

static struct desc vq_desc[VQ_SIZE] __attribute__((aligned(16)));
static struct avail vq_avail __attribute__((aligned(2)));
static struct used vq_used __attribute__((aligned(4)));
static struct blk_req req;
static u8 sector_buf[512] __attribute__((aligned(512)));
static volatile u8 req_status;
static u64 blk_base;

static int blk_init(void) {
    const char *dev = param("virtio_mmio.device");
    if (!dev) return -1;
    while (*dev && *dev != '@') dev++;
    if (!*dev) return -1;
    blk_base = parse_num(dev + 1, 0);
    if (mmio_read(blk_base) != 0x74726976 || mmio_read(blk_base + 4) != 2 || mmio_read(blk_base + 8) != 2)
        return -2;
    mmio_write(blk_base + 0x70, 0);          /* reset */
    mmio_write(blk_base + 0x70, 1 | 2);      /* ACKNOWLEDGE | DRIVER */
    mmio_write(blk_base + 0x24, 1);          /* driver features, high word */
    mmio_write(blk_base + 0x20, 1);          /* VIRTIO_F_VERSION_1 */
    mmio_write(blk_base + 0x24, 0);
    mmio_write(blk_base + 0x20, 0);
    mmio_write(blk_base + 0x70, 1 | 2 | 8);  /* FEATURES_OK */
    if (!(mmio_read(blk_base + 0x70) & 8)) return -3;
    mmio_write(blk_base + 0x30, 0);          /* queue 0 */
    if (mmio_read(blk_base + 0x34) < VQ_SIZE) return -4;
    mmio_write(blk_base + 0x38, VQ_SIZE);
    mmio_write(blk_base + 0x80, (u32)(u64)vq_desc);
    mmio_write(blk_base + 0x84, 0);
    mmio_write(blk_base + 0x90, (u32)(u64)&vq_avail);
    mmio_write(blk_base + 0x94, 0);
    mmio_write(blk_base + 0xa0, (u32)(u64)&vq_used);
    mmio_write(blk_base + 0xa4, 0);
    mmio_write(blk_base + 0x44, 1);          /* queue ready */
    mmio_write(blk_base + 0x70, 1 | 2 | 8 | 4); /* DRIVER_OK */
    return 0;
}

/* One request of one sector; 0 on success. */
static int blk_io(u32 type, u64 sector) {
    req.type = type;
    req.reserved = 0;
    req.sector = sector;
    req_status = 0xff;
    vq_desc[0] = (struct desc){(u64)&req, sizeof req, 1, 1};                       /* NEXT */
    vq_desc[1] = (struct desc){(u64)sector_buf, 512, (u16)(1 | (type == 0 ? 2 : 0)), 2}; /* NEXT|WRITE */
    vq_desc[2] = (struct desc){(u64)&req_status, 1, 2, 0};                          /* WRITE */
    u16 used_before = *(volatile u16 *)&vq_used.idx;
    vq_avail.ring[vq_avail.idx % VQ_SIZE] = 0;
    barrier();
    vq_avail.idx++;
    barrier();
    mmio_write(blk_base + 0x50, 0);          /* notify queue 0 */
    for (u64 spins = 0; *(volatile u16 *)&vq_used.idx == used_before; spins++)
        if (spins > 100000000) return -1;
    barrier();
    mmio_write(blk_base + 0x64, mmio_read(blk_base + 0x60)); /* ack interrupt */
    return req_status;
}

static void blk_command(const char *cmd) {
    int rc = blk_init();
    if (rc) {
        puts_("drover-guest: blk error init ");
        putu((u64)-rc);
        putc_('\n');
        return;
    }
    if (starts_with(cmd, "write:")) {
        const char *tok = cmd + 6;
        int i = 0;
        for (; tok[i] && tok[i] != ' ' && i < 500; i++) sector_buf[i] = (u8)tok[i];
        for (; i < 512; i++) sector_buf[i] = 0;
        rc = blk_io(1, 0);
        if (rc) {
            puts_("drover-guest: blk error write\n");
            return;
        }
        puts_("drover-guest: blk wrote ");
        for (i = 0; sector_buf[i]; i++) putc_((char)sector_buf[i]);
        putc_('\n');
    } else if (starts_with(cmd, "read")) {
        rc = blk_io(0, 0);
        if (rc) {
            puts_("drover-guest: blk error read\n");
            return;
        }
        puts_("drover-guest: blk read ");
        for (int i = 0; i < 500 && sector_buf[i]; i++) putc_((char)sector_buf[i]);
        putc_('\n');
    }
}

/* ---- memory dirtier ---- */

extern u8 __dirty_start[];

static void dirty(u64 mib, u64 round) {
    volatile u8 *p = __dirty_start;
    for (u64 off = 0; off < (mib << 20); off += 4096) p[off] = (u8)round;
}

void guest_main(void) {
    u64 si = start_info_paddr;
    if (si && *(u32 *)si == 0x336ec578) {
        u64 cl = *(u64 *)(si + 24);
        if (cl) cmdline = (const char *)cl;
    }
    puts_(MARKER "\n");

    const char *blk = param("drover.blk");
    if (blk) blk_command(blk);

    u64 tick_ms = parse_num(param("drover.tick_ms"), 100);
    u64 tsc_mhz = parse_num(param("drover.tsc_mhz"), 2300);
    u64 dirty_mib = parse_num(param("drover.dirty_mib"), 0);
    u64 ticks = parse_num(param("drover.ticks"), 0);
    u64 interval = tick_ms * tsc_mhz * 1000;
    u64 next = rdtsc() + interval;
    for (u64 tick = 1;; tick++) {
        if (dirty_mib) dirty(dirty_mib, tick);
        for (;;) {
            int c = serial_rx();
            if (c == 'p') power_off();
            if (c == 'r') reset();
            long left = (long)(next - rdtsc());
            if (left <= 0) break;
            /* Drover's VMM sleeps here until the tick is due or input arrives; under
             * QEMU the port does nothing and this loop polls. */
            u64 ms = (u64)left / (tsc_mhz * 1000);
            outw(IDLE_PORT, (u16)(ms > 100 ? 100 : ms));
        }
        next += interval;
        puts_("drover-guest: tick ");
        putu(tick);
        putc_('\n');
        if (ticks && tick >= ticks) power_off();
    }
}
