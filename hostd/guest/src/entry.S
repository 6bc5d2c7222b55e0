/*
 * Drover test guest: PVH entry.
 *
 * The VMM (or QEMU) enters here in 32-bit protected mode with paging off and %ebx
 * pointing at the hvm_start_info structure (PVH boot ABI). Ring-0 code is kept to a
 * few dozen instructions because under kvm-pvm every ring-0 instruction is emulated:
 * the page tables are static (below), so ring 0 only loads them, enters long mode and
 * drops to ring 3 with IOPL 3, where the C workload (guest.c) runs natively and does
 * port I/O itself.
 */

        .section .note.Xen, "a", @note
        .balign 4
        .long 4                 /* name size: "Xen\0" */
        .long 4                 /* descriptor size */
        .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .balign 4
        .long _start32
        .balign 4

        .section .text.entry, "ax"
        .code32
        .globl _start32
_start32:
        movl    %ebx, start_info_paddr
        lgdt    gdt_desc
        movl    $0x20, %eax             /* CR4.PAE */
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $0xc0000080, %ecx       /* EFER */
        rdmsr
        orl     $0x100, %eax            /* EFER.LME */
        wrmsr
        movl    %cr0, %eax
        orl     $0x80000001, %eax       /* CR0.PG | CR0.PE */
        movl    %eax, %cr0
        ljmp    $0x08, $start64

        .code64
start64:
        movq    $boot_stack_top, %rsp   /* PVH leaves the stack undefined */
        movw    $0x23, %ax              /* ring-3 data selector */
        movw    %ax, %ds
        movw    %ax, %es
        pushq   $0x23                   /* SS */
        pushq   $user_stack_top         /* RSP */
        pushq   $0x3002                 /* RFLAGS: IOPL 3, interrupts off */
        pushq   $0x1b                   /* CS: ring-3 64-bit code */
        pushq   $guest_main             /* RIP */
        iretq

        .section .data
        .balign 8
        .globl start_info_paddr
start_info_paddr:
        .quad 0

        .balign 16
gdt:
        .quad 0                         /* null */
        .quad 0x00af9a000000ffff        /* 0x08: ring-0 64-bit code */
        .quad 0x00cf92000000ffff        /* 0x10: ring-0 data */
        .quad 0x00affa000000ffff        /* 0x18: ring-3 64-bit code */
        .quad 0x00cff2000000ffff        /* 0x20: ring-3 data */
gdt_end:
gdt_desc:
        .word gdt_end - gdt - 1
        .long gdt

        /* Identity map of the first 4 GiB with 2 MiB pages, user-accessible
         * (present | writable | user | large). */
        .balign 4096
pml4:
        .quad pdpt + 0x7
        .fill 511, 8, 0
pdpt:
        .quad pd + 0x0007
        .quad pd + 0x1007
        .quad pd + 0x2007
        .quad pd + 0x3007
        .fill 508, 8, 0
pd:
        .set page, 0
        .rept 2048
        .quad (page << 21) | 0x87
        .set page, page + 1
        .endr

        /* The stacks are outside .bss: guest_main zeroes .bss on the stack above. */
        .section .stack, "aw", @nobits
        .balign 16
user_stack:
        .skip 65536
user_stack_top:
        .skip 256
boot_stack_top:

        .section .note.GNU-stack, "", @progbits
