fn main() {
    println!("{}", dataplane_user::bpf::EBPF_OBJECT.len());
}
