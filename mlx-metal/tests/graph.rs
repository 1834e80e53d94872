//! Graph listings: the operations a lazy array still needs, counted.

use mlx_metal::graph::{count_operations, print_graph};
use mlx_metal::Array;

#[test]
fn a_lazy_chain_lists_each_operation_once_and_an_evaluated_one_none() {
    let x = Array::from_vec(&[1.0f32, 2.0, 3.0]).unwrap();
    let y = x.add(&x).unwrap().multiply(&x).unwrap().exp().unwrap();
    let text = print_graph(&[&y]).unwrap();
    eprintln!("{text}");
    let counts = count_operations(&[&y]).unwrap();
    assert_eq!(counts.values().sum::<usize>(), 3, "{counts:?}\n{text}");
    assert_eq!(counts.get("Add"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("Multiply"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("Exp"), Some(&1), "{counts:?}");
    y.eval().unwrap();
    assert!(count_operations(&[&y]).unwrap().is_empty());
}
