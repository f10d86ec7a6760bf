/* benches/peers/null-sized.c: the harness's kernel floor (../shared/bench/null-floor.c),
 * changed in one thing: with NULL_ANSWER_LEN=N every answer is N bytes long (the fixed A
 * record, then a TXT record in the answer section whose text fills it up to N). It tells
 * what the kernel's UDP path costs per answer when the answers are as long as a signed
 * server's (e.g. gto's signed `vpn` answer), where the harness's floor answers with 16
 * bytes after the question. Run it as the harness's server under test:
 *   SUT_NAME=null-sized SUT_CMD="exec env NULL_ANSWER_LEN=191 /tmp/null-sized \$BENCH_PORT"
 * (it answers every name alike; an SOA query gets an SOA record, which the harness's
 * start-up check asks for.) Not part of any test.
 *
 * The harness's text follows. */
/* The floor for a kernel-UDP DNS server: recvmmsg/sendmmsg batches of 32, one thread,
 * every query answered with one fixed A record (192.0.2.11) pointing at the question.
 * No parsing beyond the question's end, no policy. After a batch of fewer than 8 it
 * sleeps NULL_COALESCE_US microseconds (default 100, 0 = off) so the next batch is
 * bigger, as interrupt moderation does. Answers of a batch with one length and one
 * destination leave as one UDP GSO message (UDP_SEGMENT), as a server that batches its
 * sends can do; NULL_GSO=0 sends every answer as its own datagram (the floor before
 * 2026-12-03). The physical-limit anchor of peers.sh (`PEERS=... null`): what any
 * server on the kernel's UDP path pays, and no more. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define B 32
int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 5300, one = 1;
    const char *c = getenv("NULL_COALESCE_US"), *g = getenv("NULL_GSO"), *w = getenv("NULL_ANSWER_LEN");
    int want = w ? atoi(w) : 0;
    long pause_us = c ? atol(c) : 100;
    int gso = g ? atoi(g) : 1;
    struct timespec pause = {0, pause_us * 1000};
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(s, (void *)&a, sizeof a)) { perror("bind"); return 1; }
    static unsigned char buf[B][1500];
    static struct sockaddr_in from[B];
    struct iovec iov[B]; struct mmsghdr m[B];
    /* send side: one message per group of answers with one length and one destination */
    struct iovec giov[B][B]; struct mmsghdr out[B]; int glen[B], gdst[B], gn[B];
    static union { char b[CMSG_SPACE(sizeof(unsigned short))]; struct cmsghdr h; } ctl[B];
    for (;;) {
        for (int i = 0; i < B; i++) {
            iov[i] = (struct iovec){buf[i], 1500};
            m[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i],
                                           .msg_iov = &iov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(s, m, B, MSG_WAITFORONE, NULL);
        if (n <= 0) continue;
        for (int i = 0; i < n; i++) {
            unsigned char *p = buf[i]; int len = m[i].msg_len, q = 12;
            if (len < 17) { iov[i].iov_len = 0; continue; }
            while (q < len && p[q]) q += p[q] + 1;   /* end of QNAME */
            q += 5;                                   /* root label, QTYPE, QCLASS */
            if (q > len) { iov[i].iov_len = 0; continue; }
            p[2] = 0x84 | (p[2] & 1); p[3] = 0;      /* QR AA, RD copied, NOERROR */
            p[6] = 0; p[7] = 1; p[8] = p[9] = p[10] = p[11] = 0;
            static const unsigned char rr[] = {0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 11};
            if (p[q - 3] == 6 && p[q - 4] == 0) {          /* SOA: ns1.<qname> h.<qname> */
                static const unsigned char soa[] = {0xc0, 12, 0, 6, 0, 1, 0, 0, 0, 30, 0, 30,
                    3, 'n', 's', '1', 0xc0, 12, 1, 'h', 0xc0, 12,
                    0, 0, 0, 1, 0, 0, 14, 16, 0, 0, 2, 88, 0, 1, 81, 128, 0, 0, 1, 44};
                memcpy(p + q, soa, sizeof soa);
                iov[i].iov_len = q + sizeof soa;
                continue;
            }
            memcpy(p + q, rr, sizeof rr);
            iov[i].iov_len = q + sizeof rr;
            /* padding: a TXT record at the question's name whose one string fills up to
             * `want` bytes (at most 255 bytes of text) */
            int text = want - (q + (int)sizeof rr) - 13;
            if (text > 255) text = 255;
            if (text >= 0 && q + sizeof rr + 13 + text <= 1500) {
                unsigned char *t = p + q + sizeof rr;
                unsigned char txt[] = {0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 30,
                                       (unsigned char)((text + 1) >> 8), (unsigned char)(text + 1),
                                       (unsigned char)text};
                memcpy(t, txt, sizeof txt);
                memset(t + sizeof txt, 'x', text);
                p[7] = 2;
                iov[i].iov_len += sizeof txt + text;
            }
            m[i].msg_hdr.msg_iovlen = 1;
        }
        if (!gso) { sendmmsg(s, m, n, 0); goto next; }
        int groups = 0;
        for (int i = 0; i < n; i++) {
            int len = iov[i].iov_len, k;
            if (!len) continue;
            for (k = 0; k < groups; k++)
                if (glen[k] == len && from[gdst[k]].sin_port == from[i].sin_port &&
                    from[gdst[k]].sin_addr.s_addr == from[i].sin_addr.s_addr) break;
            if (k == groups) { glen[k] = len; gdst[k] = i; gn[k] = 0; groups++; }
            giov[k][gn[k]++] = iov[i];
        }
        for (int k = 0; k < groups; k++) {
            struct msghdr *h = &out[k].msg_hdr;
            *h = (struct msghdr){.msg_name = &from[gdst[k]], .msg_namelen = sizeof from[0],
                                 .msg_iov = giov[k], .msg_iovlen = gn[k]};
            if (gn[k] > 1) {
                h->msg_control = ctl[k].b; h->msg_controllen = sizeof ctl[k].b;
                struct cmsghdr *cm = CMSG_FIRSTHDR(h);
                cm->cmsg_level = SOL_UDP; cm->cmsg_type = UDP_SEGMENT;
                cm->cmsg_len = CMSG_LEN(sizeof(unsigned short));
                *(unsigned short *)CMSG_DATA(cm) = (unsigned short)glen[k];
            }
        }
        sendmmsg(s, out, groups, 0);
    next:
        if (n < 8 && pause_us > 0) nanosleep(&pause, NULL);
    }
}
