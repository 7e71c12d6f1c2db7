//! Users and groups from the system's databases (NSS: `/etc/passwd`, `/etc/group`, systemd's
//! dynamic users), by the reentrant libc calls.

use std::ffi::{CStr, CString};

/// Runs a `get*_r` call, growing the buffer while it answers `ERANGE`.
fn with_buffer<T>(
    mut call: impl FnMut(&mut [libc::c_char]) -> Result<Option<T>, i32>,
) -> Option<T> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        match call(&mut buf) {
            Ok(v) => return v,
            Err(libc::ERANGE) if size < 1 << 20 => size *= 4,
            Err(_) => return None,
        }
    }
}

/// The name of a user id, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    with_buffer(|buf| {
        // SAFETY: zeroed passwd is a valid out-parameter; buf outlives the call and we copy the
        // name out before returning.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
        if rc != 0 {
            return Err(rc);
        }
        if out.is_null() || pw.pw_name.is_null() {
            return Ok(None);
        }
        // SAFETY: pw_name points into buf, NUL-terminated by getpwuid_r.
        Ok(Some(
            unsafe { CStr::from_ptr(pw.pw_name) }
                .to_string_lossy()
                .into_owned(),
        ))
    })
}

/// The user id of a user name.
pub fn uid_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    with_buffer(|buf| {
        // SAFETY: as in `user_name`.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc =
            unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
        if rc != 0 {
            return Err(rc);
        }
        Ok((!out.is_null()).then_some(pw.pw_uid))
    })
}

/// A group's id and its listed members (`/etc/group`'s fourth field).
pub struct Group {
    pub gid: u32,
    pub members: Vec<String>,
}

pub fn group(name: &str) -> Option<Group> {
    let c = CString::new(name).ok()?;
    with_buffer(|buf| {
        // SAFETY: zeroed group is a valid out-parameter; gr_mem is a NULL-terminated array of
        // NUL-terminated strings inside buf, read before buf is dropped.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        let rc =
            unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
        if rc != 0 {
            return Err(rc);
        }
        if out.is_null() {
            return Ok(None);
        }
        let mut members = Vec::new();
        let mut p = gr.gr_mem;
        while !p.is_null() {
            // SAFETY: see above; the array ends with a null pointer.
            let m = unsafe { *p };
            if m.is_null() {
                break;
            }
            members.push(unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned());
            p = unsafe { p.add(1) };
        }
        Ok(Some(Group {
            gid: gr.gr_gid,
            members,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_uid_zero_and_has_a_group() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(uid_of("root"), Some(0));
        assert_eq!(group("root").map(|g| g.gid), Some(0));
        assert_eq!(uid_of("no-such-user-llamactl"), None);
        assert!(group("no-such-group-llamactl").is_none());
        assert_eq!(uid_of("nul\0byte"), None);
    }
}
