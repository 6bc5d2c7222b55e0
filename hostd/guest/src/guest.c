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
 *   drover.blk=...        on every virtio-blk disk n (0-based, in command-line order, at
 *                         most 8), after "drover-guest: blk disks N":
 *     write:TOK           print "drover-guest: blk n ro=R held TEXT" (R: 1 when the device
 *                         offers VIRTIO_BLK_F_RO; TEXT: what sector 0 held, up to its first
 *                         NUL), then write "TOK-n" to sector 0 (also where R is 1: the
 *                         device must refuse it) and print "drover-guest: blk n wrote TOK-n",
 *                         or "drover-guest: blk n write refused status S" when the device
 *                         answered status S instead of OK
 *     read                print "drover-guest: blk n ro=R read TEXT"
 *     bench:M             time disk 0 (M MiB): sequential writes and reads of 64 KiB, then
 *                         random writes and reads of 4 KiB (M MiB of each), one request at a
 *                         time; each phase prints "drover-guest: blk bench P start" and
 *                         "... done" for the host to time
 *     watch               print the read lines, then read sector 0 of every disk after
 *                         every tick and print "drover-guest: blk n now TEXT" when it changed
 *                         (the devices are set up once, at boot: a restored snapshot goes on
 *                         using them as the snapshot left them)
 *                         Failures print "drover-guest: blk n error ...".
 *   drover.ticks=N        power off after N ticks (0: run until asked)
 *   drover.net=TOKEN      on the first virtio-net NIC: print "drover-guest: net up <mac>",
 *                         broadcast "DROVER-HELLO TOKEN" (ethertype 0x88b5) every tick, and
 *                         print "drover-guest: net rx <mac> <token>" for each hello received
 *                         from a new sender or with a new token; when the device
 *                         announces a configuration change (interrupt status bit 1, as a
 *                         VMM does when it restores a snapshot as a clone with a new MAC),
 *                         read the MAC again, send from it and print "drover-guest: net
 *                         mac <mac>" if it changed
 *   virtio_mmio.device=4K@0xADDR:IRQ   where the virtio devices are (Linux syntax, one
 *                         entry per device; the guest reads each device's type)
 *   drover.mmio_window=BASE:COUNT:STRIDE   besides those, probe COUNT transports STRIDE
 *                         bytes apart from BASE (QEMU's microvm with ACPI lists none on
 *                         the command line: 0xfeb00000:24:512; it needs virtio-mmio
 *                         version 2, -global virtio-mmio.force-legacy=false)
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

/* ---- virtio-mmio (version 2), polled ---- */

#define VQ_SIZE 8
struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[VQ_SIZE]; u16 used_event; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[VQ_SIZE]; u16 avail_event; };
struct vq {
    struct desc desc[VQ_SIZE] __attribute__((aligned(16)));
    struct avail avail __attribute__((aligned(4)));
    struct used used __attribute__((aligned(4)));
    u16 last_used;
};

/* The base of the `nth` (0-based) virtio-mmio device of type `type` among the command
 * line's virtio_mmio.device=4K@0xADDR:IRQ entries, or 0. */
static u64 find_device_nth(u32 type, u32 nth) {
    for (const char *p = cmdline; *p;) {
        while (*p == ' ') p++;
        if (starts_with(p, "virtio_mmio.device=")) {
            const char *q = p;
            while (*q && *q != ' ' && *q != '@') q++;
            if (*q == '@') {
                u64 base = parse_num(q + 1, 0);
                if (base && mmio_read(base) == 0x74726976 && mmio_read(base + 4) == 2 &&
                    mmio_read(base + 8) == type && nth-- == 0)
                    return base;
            }
        }
        while (*p && *p != ' ') p++;
    }
    /* A machine that lists no devices on the command line (QEMU's microvm with ACPI):
     * probe the window it puts its transports in, in address order. */
    const char *w = param("drover.mmio_window");
    if (w) {
        u64 base = parse_num(w, 0);
        while (*w && *w != ':') w++;
        u64 count = *w ? parse_num(++w, 0) : 0;
        while (*w && *w != ':') w++;
        u64 stride = *w ? parse_num(++w, 0) : 0;
        for (u64 i = 0; base && stride && i < count && i < 64; i++) {
            u64 at = base + i * stride;
            if (mmio_read(at) == 0x74726976 && mmio_read(at + 4) == 2 && mmio_read(at + 8) == type &&
                nth-- == 0)
                return at;
        }
    }
    return 0;
}
static u64 find_device(u32 type) { return find_device_nth(type, 0); }

/* Reset the device, accept VIRTIO_F_VERSION_1 plus `features` (low word); 0 on success. */
static int vdev_begin(u64 base, u32 features) {
    mmio_write(base + 0x70, 0);          /* reset */
    mmio_write(base + 0x70, 1 | 2);      /* ACKNOWLEDGE | DRIVER */
    mmio_write(base + 0x24, 1);          /* driver features, high word */
    mmio_write(base + 0x20, 1);          /* VIRTIO_F_VERSION_1 */
    mmio_write(base + 0x24, 0);
    mmio_write(base + 0x20, features);
    mmio_write(base + 0x70, 1 | 2 | 8);  /* FEATURES_OK */
    return (mmio_read(base + 0x70) & 8) ? 0 : -3;
}

static int vq_setup(u64 base, u32 index, struct vq *q) {
    mmio_write(base + 0x30, index);
    if (mmio_read(base + 0x34) < VQ_SIZE) return -4;
    mmio_write(base + 0x38, VQ_SIZE);
    mmio_write(base + 0x80, (u32)(u64)q->desc);
    mmio_write(base + 0x84, 0);
    mmio_write(base + 0x90, (u32)(u64)&q->avail);
    mmio_write(base + 0x94, 0);
    mmio_write(base + 0xa0, (u32)(u64)&q->used);
    mmio_write(base + 0xa4, 0);
    mmio_write(base + 0x44, 1);          /* queue ready */
    return 0;
}

/* Make descriptor `head` available on queue `index` of the device at `base`. */
static void vq_push(u64 base, u32 index, struct vq *q, u16 head) {
    q->avail.ring[q->avail.idx % VQ_SIZE] = head;
    barrier();
    q->avail.idx++;
    barrier();
    mmio_write(base + 0x50, index);      /* notify */
}

/* Wait (bounded) until the device has used everything made available; 0 when it has. */
static int vq_wait(u64 base, struct vq *q) {
    for (u64 spins = 0; *(volatile u16 *)&q->used.idx != q->avail.idx; spins++)
        if (spins > 100000000) return -1;
    barrier();
    q->last_used = q->avail.idx;
    mmio_write(base + 0x64, 1);          /* ack the used-ring interrupt (only) */
    return 0;
}

/* ---- virtio-blk: every disk, one request at a time ---- */

#define BLK_MAX 8
#define BLK_F_RO (1u << 5)
#define BLK_TEXT_MAX 500

struct blk_req { u32 type; u32 reserved; u64 sector; };
struct blk {
    u64 base;
    int ro;                              /* the device offers VIRTIO_BLK_F_RO */
    u64 seen;                            /* hash of sector 0 as last printed (watch) */
    struct vq q;
};

static struct blk blks[BLK_MAX];
static u32 blk_count;
static int blk_watch;
static struct blk_req req;
static u8 sector_buf[512] __attribute__((aligned(512)));
static volatile u8 req_status;

/* Set up disk `n` (found at `base`); 0 on success. */
static int blk_init(struct blk *b, u64 base) {
    b->base = base;
    mmio_write(base + 0x14, 0);          /* device features, low word */
    b->ro = (mmio_read(base + 0x10) & BLK_F_RO) != 0;
    int rc = vdev_begin(base, b->ro ? BLK_F_RO : 0);
    if (rc) return rc;
    rc = vq_setup(base, 0, &b->q);
    if (rc) return rc;
    mmio_write(base + 0x70, 1 | 2 | 8 | 4); /* DRIVER_OK */
    return 0;
}

/* One request of `len` bytes at `sector` from or into `buf`; the device's status (0: OK),
 * or -1 if it never answered. */
static int blk_io_buf(struct blk *b, u32 type, u64 sector, u8 *buf, u32 len) {
    req.type = type;
    req.reserved = 0;
    req.sector = sector;
    req_status = 0xff;
    b->q.desc[0] = (struct desc){(u64)&req, sizeof req, 1, 1};                       /* NEXT */
    b->q.desc[1] = (struct desc){(u64)buf, len, (u16)(1 | (type == 0 ? 2 : 0)), 2};      /* NEXT|WRITE */
    b->q.desc[2] = (struct desc){(u64)&req_status, 1, 2, 0};                          /* WRITE */
    vq_push(b->base, 0, &b->q, 0);
    if (vq_wait(b->base, &b->q)) return -1;
    return req_status;
}

/* One request of one sector, through sector_buf. */
static int blk_io(struct blk *b, u32 type, u64 sector) {
    return blk_io_buf(b, type, sector, sector_buf, 512);
}

/* ---- disk throughput (bench:M): disk 0, M MiB, one request at a time ---- */

#define BENCH_SEQ_BYTES 65536
#define BENCH_RAND_BYTES 4096
static u8 bench_buf[BENCH_SEQ_BYTES] __attribute__((aligned(4096)));

/* Run one phase: `count` requests of `len` bytes, sequential or at pseudo-random 4 KiB
 * places within `mib` MiB; prints "drover-guest: blk bench NAME start" and "... done" (the
 * host times the lines), or the failing status. */
static void bench_phase(const char *name, u32 type, u32 len, u64 count, u64 mib, int random) {
    puts_("drover-guest: blk bench ");
    puts_(name);
    puts_(" start\n");
    u64 x = 88172645463325252UL, places = mib * 256;  /* 4 KiB places */
    for (u64 i = 0; i < count; i++) {
        u64 sector;
        if (random) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            sector = (x % places) * 8;
        } else {
            sector = i * (len / 512);
        }
        if (type == 1) bench_buf[0] = (u8)i;
        int rc = blk_io_buf(&blks[0], type, sector, bench_buf, len);
        if (rc) {
            puts_("drover-guest: blk bench ");
            puts_(name);
            puts_(" error ");
            putu((u64)(rc < 0 ? 999 : rc));
            putc_('\n');
            return;
        }
    }
    puts_("drover-guest: blk bench ");
    puts_(name);
    puts_(" done\n");
}

static void blk_bench(u64 mib) {
    u64 seq = mib * 1048576 / BENCH_SEQ_BYTES, rand = mib * 1048576 / BENCH_RAND_BYTES;
    bench_phase("seq-write", 1, BENCH_SEQ_BYTES, seq, mib, 0);
    bench_phase("seq-read", 0, BENCH_SEQ_BYTES, seq, mib, 0);
    bench_phase("rand-write", 1, BENCH_RAND_BYTES, rand, mib, 1);
    bench_phase("rand-read", 0, BENCH_RAND_BYTES, rand, mib, 1);
}

/* The line head "drover-guest: blk N " for disk `n`. */
static void blk_line(u32 n) {
    puts_("drover-guest: blk ");
    putu(n);
    putc_(' ');
}

/* What sector 0 holds (in sector_buf), up to its first NUL, unprintable bytes as '.'. */
static void put_sector_text(void) {
    for (int i = 0; i < BLK_TEXT_MAX && sector_buf[i]; i++)
        putc_(sector_buf[i] >= 32 && sector_buf[i] < 127 ? (char)sector_buf[i] : '.');
    putc_('\n');
}

static u64 sector_hash(void) {
    u64 hash = 1469598103934665603UL;
    for (int i = 0; i < 512; i++) hash = (hash ^ sector_buf[i]) * 1099511628211UL;
    return hash;
}

/* Read sector 0 of disk `n` into sector_buf; 0 on success (else the error is printed). */
static int blk_read0(u32 n) {
    int rc = blk_io(&blks[n], 0, 0);
    if (rc) {
        blk_line(n);
        puts_("error read ");
        putu((u64)(rc < 0 ? 999 : rc));
        putc_('\n');
    }
    return rc;
}

static void blk_command(const char *cmd) {
    for (u64 base; blk_count < BLK_MAX && (base = find_device_nth(2, blk_count)); blk_count++) {
        int rc = blk_init(&blks[blk_count], base);
        if (rc) {
            blk_line(blk_count);
            puts_("error init ");
            putu((u64)-rc);
            putc_('\n');
            break;
        }
    }
    puts_("drover-guest: blk disks ");
    putu(blk_count);
    putc_('\n');
    if (starts_with(cmd, "bench:")) {
        if (blk_count) blk_bench(parse_num(cmd + 6, 16));
        return;
    }
    int write = starts_with(cmd, "write:");
    blk_watch = starts_with(cmd, "watch");
    for (u32 n = 0; n < blk_count; n++) {
        if (blk_read0(n)) continue;
        blk_line(n);
        puts_(blks[n].ro ? "ro=1 " : "ro=0 ");
        puts_(write ? "held " : "read ");
        put_sector_text();
        blks[n].seen = sector_hash();
        if (!write) continue;
        const char *tok = cmd + 6;
        int i = 0;
        for (; tok[i] && tok[i] != ' ' && i < BLK_TEXT_MAX - 4; i++) sector_buf[i] = (u8)tok[i];
        sector_buf[i++] = '-';
        if (n >= 10) sector_buf[i++] = (u8)('0' + n / 10);
        sector_buf[i++] = (u8)('0' + n % 10);
        for (; i < 512; i++) sector_buf[i] = 0;
        int rc = blk_io(&blks[n], 1, 0);
        blk_line(n);
        if (rc == 0) {
            puts_("wrote ");
            put_sector_text();
        } else {
            puts_("write refused status ");
            putu((u64)(rc < 0 ? 999 : rc));
            putc_('\n');
        }
    }
}

/* Watch: print each disk's sector 0 when it is not what was last printed. */
static void blk_poll(void) {
    for (u32 n = 0; n < blk_count; n++) {
        if (blk_read0(n)) continue;
        u64 hash = sector_hash();
        if (hash == blks[n].seen) continue;
        blks[n].seen = hash;
        blk_line(n);
        puts_("now ");
        put_sector_text();
    }
}

/* ---- virtio-net: send a hello frame every tick, print each new one received ---- */

#define NET_HDR 12                       /* virtio_net_hdr_v1 */
#define NET_BUF 1536
#define ETHERTYPE_DROVER 0x88b5          /* IEEE "local experimental" */
#define NET_HELLO "DROVER-HELLO "

static struct vq net_rx, net_tx;
static u8 rx_bufs[VQ_SIZE][NET_BUF] __attribute__((aligned(16)));
static u8 tx_buf[NET_BUF] __attribute__((aligned(16)));
static u8 net_mac[6];
static u64 net_base;
static const char *net_token;
static u8 last_src[6];
static u64 last_hash;

static void puthex2(u8 b) {
    const char *hex = "0123456789abcdef";
    putc_(hex[b >> 4]);
    putc_(hex[b & 15]);
}
static void putmac(const u8 *m) {
    for (int i = 0; i < 6; i++) {
        if (i) putc_(':');
        puthex2(m[i]);
    }
}

/* The MAC from the config space, read until the config generation is the same before and
 * after (virtio 1.x, 4.2.2.2: the device may change it meanwhile). */
static void net_read_mac(void) {
    u32 before, after;
    do {
        before = mmio_read(net_base + 0xfc);
        for (int i = 0; i < 6; i++) net_mac[i] = *(volatile u8 *)(net_base + 0x100 + (u64)i);
        after = mmio_read(net_base + 0xfc);
    } while (before != after);
}

/* Take a configuration change the device announced: the MAC may be another now. */
static void net_config_check(void) {
    if (!(mmio_read(net_base + 0x60) & 2)) return;  /* InterruptStatus: configuration change */
    mmio_write(net_base + 0x64, 2);                  /* InterruptACK */
    u8 old[6];
    int same = 1;
    for (int i = 0; i < 6; i++) old[i] = net_mac[i];
    net_read_mac();
    for (int i = 0; i < 6; i++) same &= old[i] == net_mac[i];
    if (!same) {
        puts_("drover-guest: net mac ");
        putmac(net_mac);
        putc_('\n');
    }
}

static int net_init(void) {
    net_base = find_device(1);
    if (!net_base) return -1;
    int rc = vdev_begin(net_base, 1u << 5);  /* VIRTIO_NET_F_MAC */
    if (rc) return rc;
    net_read_mac();
    if ((rc = vq_setup(net_base, 0, &net_rx)) || (rc = vq_setup(net_base, 1, &net_tx))) return rc;
    mmio_write(net_base + 0x70, 1 | 2 | 8 | 4); /* DRIVER_OK */
    for (u16 i = 0; i < VQ_SIZE; i++) {
        net_rx.desc[i] = (struct desc){(u64)rx_bufs[i], NET_BUF, 2, 0}; /* WRITE */
        vq_push(net_base, 0, &net_rx, i);
    }
    return 0;
}

/* Broadcast "DROVER-HELLO <token>" in an Ethernet frame of type 0x88b5. */
static void net_send(void) {
    u8 *f = tx_buf;
    for (int i = 0; i < NET_HDR; i++) f[i] = 0;
    u8 *eth = f + NET_HDR;
    for (int i = 0; i < 6; i++) eth[i] = 0xff, eth[6 + i] = net_mac[i];
    eth[12] = ETHERTYPE_DROVER >> 8;
    eth[13] = ETHERTYPE_DROVER & 0xff;
    u32 n = 14;
    for (const char *h = NET_HELLO; *h; h++) eth[n++] = (u8)*h;
    for (const char *t = net_token; *t && *t != ' ' && n < 100; t++) eth[n++] = (u8)*t;
    while (n < 60) eth[n++] = 0;         /* the shortest Ethernet frame */
    net_tx.desc[0] = (struct desc){(u64)tx_buf, NET_HDR + n, 0, 0};
    vq_push(net_base, 1, &net_tx, 0);
    if (vq_wait(net_base, &net_tx)) puts_("drover-guest: net error send\n");
}

/* Look at every frame received so far; print a hello when its sender or text changes. */
static void net_poll(void) {
    while (*(volatile u16 *)&net_rx.used.idx != net_rx.last_used) {
        barrier();
        struct used_elem e = net_rx.used.ring[net_rx.last_used % VQ_SIZE];
        net_rx.last_used++;
        const u8 *eth = rx_bufs[e.id % VQ_SIZE] + NET_HDR;
        u32 len = e.len > NET_HDR ? e.len - NET_HDR : 0;
        const char *hello = NET_HELLO;
        u32 h = 0;
        while (hello[h] && 14 + h < len && eth[14 + h] == (u8)hello[h]) h++;
        if (len >= 14 && eth[12] == (ETHERTYPE_DROVER >> 8) && eth[13] == (ETHERTYPE_DROVER & 0xff) &&
            !hello[h]) {
            u64 hash = 1469598103934665603UL;
            for (u32 i = 14; i < len && eth[i]; i++) hash = (hash ^ eth[i]) * 1099511628211UL;
            int same = hash == last_hash;
            for (int i = 0; i < 6; i++) same &= eth[6 + i] == last_src[i];
            if (!same) {
                last_hash = hash;
                for (int i = 0; i < 6; i++) last_src[i] = eth[6 + i];
                puts_("drover-guest: net rx ");
                putmac(eth + 6);
                putc_(' ');
                for (u32 i = 14 + h; i < len && eth[i]; i++) putc_((char)eth[i]);
                putc_('\n');
            }
        }
        vq_push(net_base, 0, &net_rx, (u16)(e.id % VQ_SIZE)); /* give the buffer back */
    }
}

/* ---- memory dirtier ---- */

extern u8 __dirty_start[];

static void dirty(u64 mib, u64 round) {
    volatile u8 *p = __dirty_start;
    for (u64 off = 0; off < (mib << 20); off += 4096) p[off] = (u8)round;
}

extern u8 __bss_start[], __bss_end[];

void guest_main(void) {
    /* The ELF loader copies the file's bytes only, and a reboot reloads them over the
     * memory of the run before: .bss starts zeroed only because this zeroes it (as any
     * kernel clears its own). */
    for (volatile u8 *p = __bss_start; p < __bss_end; p++) *p = 0;
    u64 si = start_info_paddr;
    if (si && *(u32 *)si == 0x336ec578) {
        u64 cl = *(u64 *)(si + 24);
        if (cl) cmdline = (const char *)cl;
    }
    puts_(MARKER "\n");

    const char *blk = param("drover.blk");
    if (blk) blk_command(blk);

    net_token = param("drover.net");
    if (net_token) {
        int rc = net_init();
        if (rc) {
            puts_("drover-guest: net error init ");
            putu((u64)-rc);
            putc_('\n');
            net_token = 0;
        } else {
            puts_("drover-guest: net up ");
            putmac(net_mac);
            putc_('\n');
        }
    }

    u64 tick_ms = parse_num(param("drover.tick_ms"), 100);
    u64 tsc_mhz = parse_num(param("drover.tsc_mhz"), 2300);
    u64 dirty_mib = parse_num(param("drover.dirty_mib"), 0);
    u64 ticks = parse_num(param("drover.ticks"), 0);
    u64 interval = tick_ms * tsc_mhz * 1000;
    u64 next = rdtsc() + interval;
    for (u64 tick = 1;; tick++) {
        if (dirty_mib) dirty(dirty_mib, tick);
        if (net_token) {
            net_config_check();
            net_send();
        }
        for (;;) {
            if (net_token) net_poll();
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
        if (blk_watch) blk_poll();
        if (ticks && tick >= ticks) power_off();
    }
}
