//! Fault queues: IOMMU_FAULT_QUEUE_ALLOC, the fd's read/write/poll, delivery of
//! IOMMU_TEST_OP_TRIGGER_IOPF through a fault-capable nested HWPT, and automatic responses
//! (reference §1.7; the selftest's `alloc_hwpt_nested` iopf part).

mod selftest_common;

use selftest_common::*;
use uiommu_iommufd::abi::*;
use uiommu_iommufd::errno::Errno;
use uiommu_iommufd::fault::{Fault, ResponseCounts};
use uiommu_iommufd::file::{EmulatedFile, FileInstaller, PollEvents};
use uiommu_iommufd::object::ObjId;
use uiommu_iommufd::user_memory::UserVa;
use zerocopy::FromBytes;

/// A device attached to a nested HWPT with a fault queue: (env, stdev, idev, fault id, fd,
/// iopf hwpt, parent).
struct Iopf {
    env: Env,
    stdev: u32,
    idev: u32,
    fault: u32,
    fd: u32,
    iopf_hwpt: u32,
    parent: u32,
    ioas: u32,
}

fn iopf_setup() -> Iopf {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (stdev, _, idev) = env.mock_domain(ioas).unwrap();
    let parent = env
        .hwpt_alloc(idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT)
        .unwrap();
    let (fault, fd) = env.fault_alloc().unwrap();
    let iopf_hwpt = env.nested_alloc(idev, parent, 0, Some(fault)).unwrap();
    env.replace(stdev, iopf_hwpt).unwrap();
    Iopf {
        env,
        stdev,
        idev,
        fault,
        fd,
        iopf_hwpt,
        parent,
        ioas,
    }
}

fn trigger(env: &Env, idev: u32, pasid: u32, grpid: u32) -> Result<(), Errno> {
    env.test_cmd(
        0,
        &TestTriggerIopf {
            dev_id: idev,
            pasid,
            grpid,
            perm: IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE,
            addr: 0xdead_beaf,
        },
    )
    .map(|_| ())
}

fn file(env: &Env, fd: u32) -> EmulatedFile {
    env.fds.get(fd as i32).expect("open fd")
}

fn read(
    env: &Env,
    fd: u32,
    records: &mut [IommuHwptPgfault],
    count: usize,
) -> Result<usize, Errno> {
    file(env, fd).read(
        env.memory.as_ref(),
        UserVa(records.as_mut_ptr() as u64),
        count,
        0,
    )
}

fn respond(env: &Env, fd: u32, responses: &[IommuHwptPageResponse]) -> Result<usize, Errno> {
    file(env, fd).write(
        env.memory.as_ref(),
        UserVa(responses.as_ptr() as u64),
        std::mem::size_of_val(responses),
        0,
    )
}

fn responses(env: &Env, fault: u32) -> ResponseCounts {
    env.ctx
        .objects()
        .get::<Fault>(ObjId(fault))
        .unwrap()
        .responses()
}

#[test]
fn fault_queue_alloc_checks_flags_and_returns_an_empty_queue() {
    let env = Env::new();
    let mut cmd = IommuFaultAlloc {
        size: size_of::<IommuFaultAlloc>() as u32,
        flags: 1,
        ..Default::default()
    };
    assert_eq!(
        env.ioctl(IOMMU_FAULT_QUEUE_ALLOC, &mut cmd),
        Err(Errno::EOPNOTSUPP)
    );
    assert!(env.fds.open_fds().is_empty());
    let (id, fd) = env.fault_alloc().unwrap();
    assert_eq!((id, fd), (1, 3));
    let mut records = [IommuHwptPgfault::default(); 2];
    assert_eq!(
        read(&env, fd, &mut records, 40),
        Ok(0),
        "empty queue reads nothing"
    );
    assert_eq!(read(&env, fd, &mut records, 39), Err(Errno::ESPIPE));
    assert_eq!(
        file(&env, fd).read(
            env.memory.as_ref(),
            UserVa(records.as_mut_ptr() as u64),
            40,
            8
        ),
        Err(Errno::ESPIPE)
    );
    assert_eq!(file(&env, fd).poll(), PollEvents::OUT);
    assert_eq!(
        env.destroy(id),
        Err(Errno::EBUSY),
        "the fd holds the object"
    );
    env.close(fd).unwrap();
    env.destroy(id).unwrap();
}

#[test]
fn a_triggered_fault_is_read_once_and_answered_by_cookie() {
    let t = iopf_setup();
    let env = &t.env;
    assert_eq!(env.destroy(t.iopf_hwpt), Err(Errno::EBUSY));
    trigger(env, t.idev, 1, 2).unwrap();
    let events = file(env, t.fd).poll();
    assert!(events.contains(
        PollEvents::IN
            .union(PollEvents::RDNORM)
            .union(PollEvents::OUT)
    ));
    let mut records = [IommuHwptPgfault::default(); 2];
    assert_eq!(read(env, t.fd, &mut records, 80), Ok(40));
    assert_eq!(
        records[0],
        IommuHwptPgfault {
            flags: IOMMU_PGFAULT_FLAGS_PASID_VALID | IOMMU_PGFAULT_FLAGS_LAST_PAGE,
            dev_id: t.idev,
            pasid: 1,
            grpid: 2,
            perm: IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE,
            reserved: 0,
            addr: 0xdead_beaf,
            length: 0,
            cookie: 1,
        }
    );
    assert_eq!(file(env, t.fd).poll(), PollEvents::OUT);
    assert_eq!(read(env, t.fd, &mut records, 40), Ok(0));
    let bad_code = [IommuHwptPageResponse { cookie: 1, code: 2 }];
    assert_eq!(respond(env, t.fd, &bad_code), Err(Errno::EINVAL));
    let wrong_cookie = [IommuHwptPageResponse { cookie: 9, code: 0 }];
    assert_eq!(respond(env, t.fd, &wrong_cookie), Err(Errno::EINVAL));
    let ok = [IommuHwptPageResponse {
        cookie: 1,
        code: IOMMUFD_PAGE_RESP_SUCCESS,
    }];
    assert_eq!(respond(env, t.fd, &ok), Ok(8));
    assert_eq!(
        respond(env, t.fd, &ok),
        Err(Errno::EINVAL),
        "already answered"
    );
    assert_eq!(
        responses(env, t.fault),
        ResponseCounts {
            success: 1,
            invalid: 0
        }
    );
    // Writes must be whole responses.
    assert_eq!(
        file(env, t.fd).write(env.memory.as_ref(), UserVa(ok.as_ptr() as u64), 7, 0),
        Err(Errno::ESPIPE)
    );
}

#[test]
fn reads_take_whole_groups_and_report_errors_only_when_nothing_was_read() {
    let t = iopf_setup();
    let env = &t.env;
    for grpid in 0..3 {
        trigger(env, t.idev, 0, grpid).unwrap();
    }
    let mut records = [IommuHwptPgfault::default(); 4];
    assert_eq!(
        read(env, t.fd, &mut records, 0),
        Err(Errno::EINVAL),
        "first group does not fit"
    );
    assert_eq!(read(env, t.fd, &mut records, 80), Ok(80));
    assert_eq!(
        (
            records[0].cookie,
            records[1].cookie,
            records[0].grpid,
            records[1].grpid
        ),
        (1, 2, 0, 1)
    );
    assert_eq!(records[0].flags, IOMMU_PGFAULT_FLAGS_LAST_PAGE, "no PASID");
    // A group that cannot be written back stays queued.
    let mut bytes = vec![0u8; 40];
    let ptr = bytes.as_mut_ptr() as u64;
    trigger(env, t.idev, 0, 7).unwrap();
    let got = file(env, t.fd).read(env.memory.as_ref(), UserVa(ptr), 40, 0);
    assert_eq!(got, Ok(40));
    let record = IommuHwptPgfault::read_from_bytes(&bytes).unwrap();
    assert_eq!((record.grpid, record.cookie), (2, 3));
    assert_eq!(
        file(env, t.fd).read(env.memory.as_ref(), UserVa(UNMAPPED_VA), 40, 0),
        Err(Errno::EFAULT)
    );
    let mut one = [IommuHwptPgfault::default(); 1];
    assert_eq!(
        read(env, t.fd, &mut one, 40),
        Ok(40),
        "the group survived the EFAULT"
    );
    assert_eq!(one[0].grpid, 7);
    // Several responses in one write; a bad one stops the write after the good ones.
    let batch = [
        IommuHwptPageResponse { cookie: 1, code: 0 },
        IommuHwptPageResponse { cookie: 2, code: 1 },
        IommuHwptPageResponse {
            cookie: 42,
            code: 0,
        },
    ];
    assert_eq!(respond(env, t.fd, &batch), Ok(16));
    assert_eq!(
        responses(env, t.fault),
        ResponseCounts {
            success: 1,
            invalid: 1
        }
    );
}

#[test]
fn leaving_the_fault_hwpt_answers_queued_and_pending_groups_invalid() {
    let t = iopf_setup();
    let env = &t.env;
    trigger(env, t.idev, 1, 1).unwrap();
    trigger(env, t.idev, 1, 2).unwrap();
    let mut one = [IommuHwptPgfault::default(); 1];
    assert_eq!(read(env, t.fd, &mut one, 40), Ok(40));
    env.replace(t.stdev, t.parent).unwrap();
    assert_eq!(
        responses(env, t.fault),
        ResponseCounts {
            success: 0,
            invalid: 2
        }
    );
    assert_eq!(read(env, t.fd, &mut one, 40), Ok(0));
    assert_eq!(
        respond(env, t.fd, &[IommuHwptPageResponse { cookie: 1, code: 0 }]),
        Err(Errno::EINVAL),
        "the pending group was answered already"
    );
    // Not attached to a fault-capable HWPT: the report is dropped, the test op still succeeds.
    trigger(env, t.idev, 0, 3).unwrap();
    assert_eq!(read(env, t.fd, &mut one, 40), Ok(0));
    env.destroy(t.iopf_hwpt).unwrap();
    assert_eq!(
        env.destroy(t.fault),
        Err(Errno::EBUSY),
        "the fd still holds it"
    );
    env.close(t.fd).unwrap();
    env.destroy(t.fault).unwrap();
    let _ = t.ioas;
}

#[test]
fn pasid_faults_need_a_nested_hwpt_and_faults_need_a_mock_device() {
    let t = iopf_setup();
    let env = &t.env;
    assert_eq!(
        trigger(env, t.ioas, 0, 0),
        Err(Errno::ENOENT),
        "not a DEVICE"
    );
    assert_eq!(trigger(env, 999, 0, 0), Err(Errno::ENOENT));
    // The fault HWPT is nested, so a PASID fault is routed to it through the RID attachment.
    trigger(env, t.idev, 5, 0).unwrap();
    let mut one = [IommuHwptPgfault::default(); 1];
    assert_eq!(read(env, t.fd, &mut one, 40), Ok(40));
    assert_eq!(one[0].pasid, 5);
}

#[test]
fn queue_counts_follow_reads_and_detach() {
    let t = iopf_setup();
    let env = &t.env;
    trigger(env, t.idev, 0, 1).unwrap();
    trigger(env, t.idev, 0, 2).unwrap();
    let mut one = [IommuHwptPgfault::default(); 1];
    read(env, t.fd, &mut one, 40).unwrap();
    let EmulatedFile::Fault(fault_file) = file(env, t.fd) else {
        panic!("a fault fd");
    };
    assert_eq!(fault_file.fault_id(), ObjId(t.fault));
    assert_eq!(
        (fault_file.fault().queued(), fault_file.fault().pending()),
        (1, 1)
    );
    env.replace(t.stdev, t.ioas).unwrap();
    assert_eq!(
        (fault_file.fault().queued(), fault_file.fault().pending()),
        (0, 0)
    );
    drop(fault_file);
    env.destroy(t.iopf_hwpt).unwrap();
    env.close(t.fd).unwrap();
    env.destroy(t.fault).unwrap();
}
