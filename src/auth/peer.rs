//! Who is on the other end of the admin socket: the kernel's record of the connecting
//! process's credentials (`SO_PEERCRED`, and `SO_PEERGROUPS` for its supplementary groups),
//! taken when it connected, so nothing the client sends can change them.

use std::io;
use std::os::fd::RawFd;

/// `SO_PEERGROUPS` (Linux 4.13); the generic value, which x86_64, arm64 and riscv64 use.
const SO_PEERGROUPS: libc::c_int = 59;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// Supplementary groups, when the kernel reports them.
    pub groups: Option<Vec<u32>>,
    /// The uid's user name, looked up once per connection (NSS can be slow: LDAP, sssd) by
    /// `with_user_name`, not per request.
    pub user: Option<String>,
}

/// The credentials of the process connected on the Unix socket `fd`.
pub fn peer_cred(fd: RawFd) -> io::Result<PeerCred> {
    let mut ucred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the ucred we own.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut ucred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        uid: ucred.uid,
        gid: ucred.gid,
        pid: ucred.pid,
        groups: peer_groups(fd),
        user: None,
    })
}

fn peer_groups(fd: RawFd) -> Option<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 64];
    for _ in 0..4 {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the buffer we own; on ERANGE it
        // reports the size needed in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Some(groups);
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) || n <= groups.len() {
            return None;
        }
        groups.resize(n, 0);
    }
    None
}

impl PeerCred {
    /// Fills in the user name (from the user database).
    pub fn with_user_name(mut self) -> Self {
        self.user = crate::host::users::user_name(self.uid);
        self
    }

    /// Whether the peer is in group `gid` (primary or supplementary). Without the kernel's
    /// group list (kernels before 4.13), the group database's member list decides.
    pub fn in_group(&self, gid: u32, listed_members: &[String], user: Option<&str>) -> bool {
        if self.gid == gid {
            return true;
        }
        match &self.groups {
            Some(g) => g.contains(&gid),
            None => user.is_some_and(|u| listed_members.iter().any(|m| m == u)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn reads_our_own_credentials_over_a_socket_pair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let c = peer_cred(a.as_raw_fd()).unwrap();
        // SAFETY: plain getters.
        assert_eq!(c.uid, unsafe { libc::geteuid() });
        assert_eq!(c.gid, unsafe { libc::getegid() });
        assert_eq!(c.pid, std::process::id() as i32);
        assert!(
            c.groups.is_some(),
            "SO_PEERGROUPS unsupported on this kernel"
        );
    }

    #[test]
    fn group_membership() {
        let c = PeerCred {
            uid: 1000,
            gid: 1000,
            pid: 1,
            groups: Some(vec![1000, 27]),
            user: None,
        };
        assert!(c.in_group(27, &[], None));
        assert!(c.in_group(1000, &[], None));
        assert!(!c.in_group(990, &["alice".into()], Some("alice")));
        let old_kernel = PeerCred { groups: None, ..c };
        assert!(old_kernel.in_group(990, &["alice".into()], Some("alice")));
        assert!(!old_kernel.in_group(990, &["bob".into()], Some("alice")));
    }
}
