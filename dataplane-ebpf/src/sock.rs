//! cgroup sock_addr programs: host processes reaching published ports
//! (placeholder; filled in by the socket-translation work).
