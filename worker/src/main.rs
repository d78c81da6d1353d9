fn main() {
    let a = mlx_rs::Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2]);
    let b = a.matmul(&a).unwrap();
    println!("{b:?}");
}
